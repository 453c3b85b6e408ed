//! Value reads and writes answered ahead of the router.
//!
//! `GET .../values/{key}` and `PUT .../values/{key}` are the requests an edge serves most, and
//! axum's routing cost about as much as a cached read itself, and a large share of a write's
//! CPU: matching the path, percent-decoding its three parameters into freshly allocated
//! strings, cloning the matched route's boxed service, the auth middleware, then the
//! extractors reading the parameters back and cloning the headers. [`Api`] recognises that one
//! route by hand, for reads and for writes of a raw value, and calls the same handlers with the
//! same metrics, auth check and panic recovery. Anything else (another method, a multipart
//! write, a path that is not UTF-8 once decoded, an invalid key, account or namespace id, a
//! malformed query string, missing or insufficient credentials) goes through the router like
//! every other request, so each error answer has a single source.

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
use crate::body::{content_type, is_multipart};
use crate::extract::{KeyPath, Params};
use crate::metered::Handles;
use crate::{panic_response, values, Service, VALUE_ROUTE};

/// The HTTP service of a node: its router, with value reads and writes taken before it when
/// enabled. Serve it with `axum::serve(listener, axum::ServiceExt::into_make_service(api))`.
#[derive(Clone)]
pub struct Api {
    router: Router,
    values: Option<Arc<Values>>,
}

/// What a value read or write needs besides its request.
struct Values {
    service: Service,
    auth: Auth,
    /// Metric handles for the value route. The router keeps its own for the requests that fall
    /// through to it; both record under the same labels, so the figures add up.
    metrics: Handles,
}

impl Api {
    /// `router` alone.
    pub(crate) fn routed(router: Router) -> Self {
        Api {
            router,
            values: None,
        }
    }

    /// `router`, with value reads and writes of `service` (behind `auth`, counted under the
    /// node label `node`) answered before it.
    pub(crate) fn with_value_routes(
        router: Router,
        service: Service,
        auth: Auth,
        node: &str,
    ) -> Self {
        Api {
            router,
            values: Some(Arc::new(Values {
                service,
                auth,
                metrics: Handles::new(node.into()),
            })),
        }
    }
}

/// A response on its way: from the value path or from the router.
type ApiFuture = Either<
    Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
    RouteFuture<Infallible>,
>;

impl TowerService<Request> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = ApiFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready, and the value path holds no resource to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> ApiFuture {
        if let Some(values) = &self.values {
            if let Some(value) = ValueRequest::parse(&request, &values.auth) {
                return Either::Left(Box::pin(values.clone().serve(value, request)));
            }
        }
        Either::Right(self.router.call(request))
    }
}

/// What a request of the value route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `GET`: [`values::get_value`].
    Read,
    /// `PUT` of a raw value: [`values::put_value`].
    Write,
}

impl Op {
    /// The operation of a request with this method and `Content-Type`, if it is one of those
    /// answered here. A multipart write is left to the router: it is not the hot case.
    fn of(method: &Method, content_type: &str) -> Option<Self> {
        match *method {
            Method::GET => Some(Op::Read),
            Method::PUT if !is_multipart(content_type) => Some(Op::Write),
            _ => None,
        }
    }

    /// The method it is counted under.
    fn method(self) -> Method {
        match self {
            Op::Read => Method::GET,
            Op::Write => Method::PUT,
        }
    }

    /// What a token needs to do it.
    fn access(self) -> Access {
        match self {
            Op::Read => Access::Read,
            Op::Write => Access::Edit,
        }
    }
}

/// A value read or write that parsed cleanly and carries sufficient credentials.
struct ValueRequest {
    op: Op,
    path: KeyPath,
    params: Params,
    started: Instant,
}

impl ValueRequest {
    /// What `request` asks for, if it is a read or raw-value write of the value route whose
    /// parameters, query and credentials all check out; otherwise `None`, for the router to
    /// answer.
    fn parse(request: &Request<Body>, auth: &Auth) -> Option<Self> {
        let op = Op::of(request.method(), content_type(request.headers()))?;
        let (account, namespace_id, key) = split_value_path(request.uri().path())?;
        let path = KeyPath::new(&decode(account)?, &decode(namespace_id)?, &decode(key)?).ok()?;
        let params = Params::from_uri(request.uri()).ok()?;
        let scope = Scope {
            account: Some(&path.account),
            access: op.access(),
        };
        let authority = request.uri().authority().map(|a| a.as_str());
        auth.check(request.headers(), authority, scope).ok()?;
        // Timed from here, as the router's metrics time a request from its route on.
        Some(ValueRequest {
            op,
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

impl Values {
    /// Answers `value` (parsed from `request`) with the routed handler, a panic in it becoming
    /// a 500 as on every other route, and records it under the value route's labels.
    async fn serve(
        self: Arc<Self>,
        value: ValueRequest,
        request: Request,
    ) -> Result<Response, Infallible> {
        let ValueRequest {
            op,
            path,
            params,
            started,
        } = value;
        let state = State(self.service.clone());
        let handled = match op {
            Op::Read => {
                drop(request);
                values::get_value(state, path, params).left_future()
            }
            Op::Write => {
                // The handler takes the headers whole; the router's extractor would clone them.
                let (parts, body) = request.into_parts();
                values::put_value(state, path, params, parts.headers, body).right_future()
            }
        };
        let response = match AssertUnwindSafe(handled).catch_unwind().await {
            Ok(result) => result.into_response(),
            Err(panic) => panic_response(panic),
        };
        self.metrics.record(
            VALUE_ROUTE,
            &op.method(),
            response.status(),
            started.elapsed(),
        );
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{token_digest, Accounts, Grant};
    use axum::http::{header, StatusCode};
    use driftkv_core::time::unix_now_ms;
    use driftkv_core::{KvError, KvService, ListPage, ListRequest, LiveValue, Namespace};
    use driftkv_core::{NamespaceId, Write, WriteOp, WriteOutcome};
    use driftkv_metrics::HTTP_REQUESTS;
    use proptest::prelude::*;

    /// Answers reads and writes with what it was asked, so that any difference in how the two
    /// paths decode a request shows in the answer. Reads: `missing` is absent; `panic` panics.
    /// Writes: the value `ok` is written; the key `limited` is refused by the rate limit;
    /// `panic` panics; anything else fails with a description of the write.
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

        async fn write(
            &self,
            account_id: &str,
            id: NamespaceId,
            writes: Vec<Write>,
        ) -> Result<WriteOutcome, KvError> {
            let [Write { key, op }] = &writes[..] else {
                return Err(KvError::Internal(format!("{} writes", writes.len())));
            };
            let WriteOp::Put(value) = op else {
                return Err(KvError::Internal("not a put".into()));
            };
            match key.as_str() {
                "panic" => panic!("a handler panicked"),
                "limited" => Ok(WriteOutcome {
                    successful: 0,
                    unsuccessful: vec![key.clone()],
                    retry_after_ms: 2500,
                }),
                _ if value.value == "ok" => Ok(WriteOutcome {
                    successful: 1,
                    ..WriteOutcome::default()
                }),
                _ => {
                    // Seconds from now, to the nearest ten: the same for both paths unless a
                    // run takes seconds.
                    let now = unix_now_ms() / 1000;
                    let from_now = value.expiration.map(|e| (e.saturating_sub(now) + 5) / 10);
                    Err(KvError::BadRequest(format!(
                        "{account_id}|{id}|{key}|{:?}|{:?}|{from_now:?}",
                        value.value, value.metadata
                    )))
                }
            }
        }

        async fn create_namespace(&self, _: &str, _: &str) -> Result<Namespace, KvError> {
            Err(unsupported())
        }
        async fn list_namespaces(&self, _: &str) -> Result<Vec<Namespace>, KvError> {
            Err(unsupported())
        }
        async fn namespace(&self, _: &str, _: NamespaceId) -> Result<Namespace, KvError> {
            Err(unsupported())
        }
        async fn find_namespace(&self, _: NamespaceId) -> Result<Namespace, KvError> {
            Err(unsupported())
        }
        async fn rename_namespace(
            &self,
            _: &str,
            _: NamespaceId,
            _: &str,
        ) -> Result<Namespace, KvError> {
            Err(unsupported())
        }
        async fn delete_namespace(&self, _: &str, _: NamespaceId) -> Result<(), KvError> {
            Err(unsupported())
        }
        async fn list(&self, _: &str, _: NamespaceId, _: ListRequest) -> Result<ListPage, KvError> {
            Err(unsupported())
        }
    }

    fn unsupported() -> KvError {
        KvError::Internal("this test service only reads and writes values".into())
    }

    /// May do anything anywhere.
    const TOKEN: &str = "hot-routes-token";
    /// May only read, anywhere.
    const READ_TOKEN: &str = "hot-routes-read-token";
    /// May edit the account `other` only.
    const OTHER_TOKEN: &str = "hot-routes-other-token";
    const NS: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Auth {
        let grant = |token, accounts, access| {
            Grant::from_digest(&token_digest(token), accounts, access).expect("a digest")
        };
        let other = Accounts::Only(["other".to_owned()].into());
        Auth::grants(vec![
            Grant::full(TOKEN),
            grant(READ_TOKEN, Accounts::All, Access::Read),
            grant(OTHER_TOKEN, other, Access::Edit),
        ])
    }

    /// The full service (value reads and writes taken before the router) and the router
    /// alone, counted under the node label `node` and `node`-routed.
    fn both(node: &str) -> (Api, Api) {
        let service: Service = Arc::new(Echo);
        let build = |node: &str| {
            crate::router(
                service.clone(),
                auth(),
                node,
                Router::new(),
                Router::new(),
                crate::RequestTracing::default(),
            )
        };
        let fast = build(node);
        assert!(
            fast.values.is_some(),
            "requests are not traced by default, so value requests take the value path"
        );
        let routed = Api::routed(build(&format!("{node}-routed")).router);
        (fast, routed)
    }

    /// One request to send.
    #[derive(Clone, Debug)]
    struct Sent<'a> {
        method: Method,
        uri: String,
        token: Option<&'a str>,
        content_type: Option<&'a str>,
        /// A `Content-Length` to declare, whatever the body's length.
        declared: Option<u64>,
        body: &'a str,
    }

    impl<'a> Sent<'a> {
        fn new(method: Method, uri: String, token: Option<&'a str>) -> Self {
            Sent {
                method,
                uri,
                token,
                content_type: None,
                declared: None,
                body: "",
            }
        }

        fn put(uri: String, token: Option<&'a str>, body: &'a str) -> Self {
            Sent {
                body,
                ..Sent::new(Method::PUT, uri, token)
            }
        }

        fn request(&self) -> Request {
            let mut request = Request::builder()
                .method(self.method.clone())
                .uri(&self.uri);
            if let Some(token) = self.token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            if let Some(content_type) = self.content_type {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            if let Some(declared) = self.declared {
                request = request.header(header::CONTENT_LENGTH, declared);
            }
            request
                .body(Body::from(self.body.to_owned()))
                .expect("valid request")
        }
    }

    /// Status, the headers a value route's answer may set, and body.
    #[derive(Debug, PartialEq, Eq)]
    struct Answer {
        status: StatusCode,
        headers: [Option<String>; 3],
        body: String,
    }

    async fn send(api: &Api, sent: &Sent<'_>) -> Answer {
        let response = api.clone().call(sent.request()).await.expect("infallible");
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().expect("ASCII header").to_owned())
        };
        let headers = [
            header(header::CONTENT_TYPE),
            header(header::HeaderName::from_static("expiration")),
            header(header::RETRY_AFTER),
        ];
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = String::from_utf8(body.to_vec()).expect("UTF-8 answers in these tests");
        Answer {
            status,
            headers,
            body,
        }
    }

    /// What the full service and the router alone answer to `sent`.
    async fn both_answers(fast: &Api, routed: &Api, sent: &Sent<'_>) -> (Answer, Answer) {
        (send(fast, sent).await, send(routed, sent).await)
    }

    /// Whether the full service answers `sent` ahead of the router.
    fn taken(sent: &Sent<'_>) -> bool {
        ValueRequest::parse(&sent.request(), &auth()).is_some()
    }

    fn value_uri(account: &str, ns: &str, key: &str, query: &str) -> String {
        format!("/client/v4/accounts/{account}/storage/kv/namespaces/{ns}/values/{key}{query}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// Whatever the path, query, method, credentials and body, the service answers exactly
        /// as the router alone does.
        #[test]
        fn answers_as_the_router_does(
            account in prop_oneof![
                3 => Just("acct"),
                1 => prop::sample::select(vec!["a%20b", "%FF", "x%2Fy", "%41", "", "other"]),
            ],
            ns in prop_oneof![
                3 => Just(NS),
                1 => prop::sample::select(vec!["0123456789ABCDEF0123456789ABCDEF", "zz", ""]),
            ],
            pieces in prop::collection::vec(prop::sample::select(vec![
                "a", "/", "%2F", "%25", "%FF", ".", "..", "%20", "%E2%82%AC", "missing",
                "panic", "limited", "~", ":",
            ]), 0..5),
            query in prop::sample::select(vec![
                "", "?cache_ttl=60", "?cache_ttl=abc", "?cache_ttl=30",
                "?cache_ttl=60&cache_ttl=120", "?cache_ttl=%FF", "?x", "?=&=",
                "?expiration_ttl=3600", "?expiration_ttl=10", "?expiration_ttl=abc",
                "?expiration=4000000000", "?expiration=1", "?expiration=4000000000&expiration_ttl=60",
                "?expiration_ttl=%FF",
            ]),
            method in prop_oneof![
                3 => Just(Method::GET),
                3 => Just(Method::PUT),
                1 => prop::sample::select(vec![Method::HEAD, Method::DELETE, Method::POST]),
            ],
            token in prop_oneof![
                4 => Just(Some(TOKEN)),
                1 => prop::sample::select(vec![Some("wrong"), None, Some(READ_TOKEN), Some(OTHER_TOKEN)]),
            ],
            content_type in prop_oneof![
                3 => Just(None),
                1 => prop::sample::select(vec![
                    Some("text/plain"), Some("multipart/form-data; boundary=b"),
                    Some("Multipart/Form-Data; boundary=b"), Some("multipart/mixed"),
                ]),
            ],
            declared in prop_oneof![3 => Just(None), 1 => Just(Some(30_000_000))],
            body in prop::sample::select(vec!["ok", "", "other value"]),
        ) {
            let (fast, routed) = both("hot-routes-prop");
            let sent = Sent {
                method,
                uri: value_uri(account, ns, &pieces.concat(), query),
                token,
                content_type,
                declared,
                body,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let (a, b) = runtime.block_on(both_answers(&fast, &routed, &sent));
            prop_assert_eq!(a, b, "{:?}", sent);
        }
    }

    /// The writes the value path answers, each answered as the router answers it, and the
    /// writes it leaves to the router.
    #[tokio::test]
    async fn writes_answer_as_the_router_does() {
        let (fast, routed) = both("hot-routes-writes");
        let uri = |key, query| value_uri("acct", NS, key, query);
        let expect =
            |sent: Sent<'static>, status: StatusCode, body: &'static str, via_path: bool| {
                let (fast, routed) = (fast.clone(), routed.clone());
                async move {
                    assert_eq!(taken(&sent), via_path, "{sent:?}");
                    let (a, b) = both_answers(&fast, &routed, &sent).await;
                    assert_eq!(a, b, "{sent:?}");
                    assert_eq!(a.status, status, "{sent:?}: {a:?}");
                    assert!(a.body.contains(body), "{sent:?}: {a:?}");
                    a
                }
            };
        let written = expect(
            Sent::put(uri("k", ""), Some(TOKEN), "ok"),
            StatusCode::OK,
            r#""success":true"#,
            true,
        )
        .await;
        assert_eq!(written.headers[0].as_deref(), Some("application/json"));
        // The expiration reaches the service as the router passes it: an hour from now.
        expect(
            Sent::put(uri("k", "?expiration_ttl=3600"), Some(TOKEN), "v"),
            StatusCode::BAD_REQUEST,
            r#"acct|0123456789abcdef0123456789abcdef|k|b\"v\"|None|Some(360)"#,
            true,
        )
        .await;
        // Errors of the handler itself come from the same handler.
        expect(
            Sent::put(uri("k", "?expiration_ttl=1"), Some(TOKEN), "ok"),
            StatusCode::BAD_REQUEST,
            "expiration_ttl",
            true,
        )
        .await;
        let limited = expect(
            Sent::put(uri("limited", ""), Some(TOKEN), "ok"),
            StatusCode::TOO_MANY_REQUESTS,
            "limited",
            true,
        )
        .await;
        assert_eq!(limited.headers[2].as_deref(), Some("3"));
        let too_large = Sent {
            declared: Some(30_000_000),
            ..Sent::put(uri("k", ""), Some(TOKEN), "ok")
        };
        expect(too_large, StatusCode::PAYLOAD_TOO_LARGE, "", true).await;
        expect(
            Sent::put(uri("panic", ""), Some(TOKEN), "ok"),
            StatusCode::INTERNAL_SERVER_ERROR,
            "still running",
            true,
        )
        .await;
        // Credentials that do not allow the write: the router's auth answers.
        expect(
            Sent::put(uri("k", ""), None, "ok"),
            StatusCode::UNAUTHORIZED,
            "missing credentials",
            false,
        )
        .await;
        expect(
            Sent::put(uri("k", ""), Some(READ_TOKEN), "ok"),
            StatusCode::FORBIDDEN,
            "may only read",
            false,
        )
        .await;
        expect(
            Sent::put(uri("k", ""), Some(OTHER_TOKEN), "ok"),
            StatusCode::FORBIDDEN,
            "may not use account",
            false,
        )
        .await;
        // A read-only token still reads on the value path.
        let read = Sent::new(Method::GET, uri("k", ""), Some(READ_TOKEN));
        expect(read, StatusCode::OK, "acct|", true).await;
        // Multipart writes and malformed requests: the router.
        let multipart = Sent {
            content_type: Some("multipart/form-data; boundary=b"),
            ..Sent::put(
                uri("k", ""),
                Some(TOKEN),
                "--b\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\nok\r\n--b--\r\n",
            )
        };
        expect(multipart, StatusCode::OK, r#""success":true"#, false).await;
        let no_value = Sent {
            content_type: Some("MULTIPART/form-data; boundary=b"),
            ..Sent::put(uri("k", ""), Some(TOKEN), "--b--\r\n")
        };
        expect(no_value, StatusCode::BAD_REQUEST, "no 'value' part", false).await;
        let malformed = [
            (uri("%FF", ""), "UTF-8"),
            (uri("", ""), "empty"),
            (value_uri("acct", "zz", "k", ""), ""),
            (value_uri("%FF", NS, "k", ""), ""),
            (uri(&"k".repeat(600), ""), "key"),
        ];
        for (uri, body) in malformed {
            let sent = Sent::put(uri, Some(TOKEN), "ok");
            let status = send(&routed, &sent).await.status;
            assert!(status.is_client_error(), "{sent:?}: {status}");
            expect(sent, status, body, false).await;
        }
    }

    #[test]
    fn clean_requests_with_credentials_take_the_value_path() {
        let auth = auth();
        let taken = |method, uri: &str, token| {
            let sent = Sent::put(uri.into(), Some(token), "ok");
            ValueRequest::parse(&Sent { method, ..sent }.request(), &auth)
        };
        let read = taken(
            Method::GET,
            &value_uri("acct", NS, "a%2Fb%20c", "?cache_ttl=90"),
            TOKEN,
        )
        .expect("a clean read");
        assert_eq!((read.op, read.path.key.as_str()), (Op::Read, "a/b c"));
        assert_eq!(read.params.text("cache_ttl"), Some("90"));
        let write = taken(
            Method::PUT,
            &value_uri("acct", NS, "k%20", "?expiration_ttl=90"),
            TOKEN,
        )
        .expect("a clean write");
        assert_eq!((write.op, write.path.key.as_str()), (Op::Write, "k "));
        assert_eq!(write.params.text("expiration_ttl"), Some("90"));
        let k = value_uri("acct", NS, "k", "");
        assert!(taken(Method::GET, &k, READ_TOKEN).is_some());
        assert!(taken(Method::PUT, &k, READ_TOKEN).is_none());
        assert!(taken(Method::DELETE, &k, TOKEN).is_none());
        assert!(taken(Method::GET, &k, "wrong").is_none());
        assert!(taken(Method::GET, &value_uri("acct", NS, "%FF", ""), TOKEN).is_none());
        assert!(taken(Method::PUT, &value_uri("acct", "zz", "k", ""), TOKEN).is_none());
    }

    #[test]
    fn only_raw_value_writes_and_reads_are_ours() {
        assert_eq!(Op::of(&Method::GET, ""), Some(Op::Read));
        assert_eq!(Op::of(&Method::PUT, ""), Some(Op::Write));
        assert_eq!(Op::of(&Method::PUT, "text/plain"), Some(Op::Write));
        assert_eq!(Op::of(&Method::PUT, "multipart/mixed"), Some(Op::Write));
        for multipart in ["multipart/form-data; boundary=x", "Multipart/Form-DATA"] {
            assert_eq!(Op::of(&Method::PUT, multipart), None, "{multipart}");
        }
        for method in [Method::HEAD, Method::DELETE, Method::POST, Method::PATCH] {
            assert_eq!(Op::of(&method, ""), None, "{method}");
        }
    }

    #[tokio::test]
    async fn requests_are_counted_and_panics_answered() {
        let node = "hot-routes-count";
        let (fast, routed) = both(node);
        let count = |node: &str, method: &str, status: &str| {
            HTTP_REQUESTS
                .with_label_values(&[node, VALUE_ROUTE, method, status])
                .get()
        };
        let ok = value_uri("acct", NS, "k", "");
        let panics = value_uri("acct", NS, "panic", "");
        for api in [&fast, &routed] {
            for method in [Method::GET, Method::PUT] {
                for _ in 0..3 {
                    let sent = Sent::put(ok.clone(), Some(TOKEN), "ok");
                    let sent = Sent {
                        method: method.clone(),
                        ..sent
                    };
                    assert_eq!(send(api, &sent).await.status, StatusCode::OK);
                }
                let sent = Sent::new(method, panics.clone(), Some(TOKEN));
                let answer = send(api, &sent).await;
                assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
        let routed_node = format!("{node}-routed");
        for node in [node, &routed_node] {
            for method in ["GET", "PUT"] {
                assert_eq!(count(node, method, "200"), 3, "{node} {method}");
                assert_eq!(count(node, method, "500"), 1, "{node} {method}");
            }
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
