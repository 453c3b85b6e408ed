//! The workerd KV binding protocol: what workerd's `KVNamespace` binding sends to the service
//! a `kvNamespace` binding names, so that a Worker on self-hosted workerd can bind KV to an
//! edge.
//!
//! | binding call | request |
//! |---|---|
//! | `get`, `getWithMetadata` | `GET /<key>?urlencoded=true[&cache_ttl=N]` |
//! | `get([...])`, `getWithMetadata([...])` | `POST /bulk/get`, `{"keys", "type"?, "withMetadata"?, "cacheTtl"?}` |
//! | `list` | `GET /?key_count_limit=N&prefix=P&cursor=C` |
//! | `put` | `PUT /<key>?urlencoded=true[&expiration=S][&expiration_ttl=S]`, `CF-KV-Metadata` |
//! | `delete` | `DELETE /<key>?urlencoded=true` |
//!
//! The path names no namespace: the `X-Driftkv-Namespace` header does (workerd's config
//! injects it, with the token), and the request acts in the account that owns it. Failures
//! are a status and a reason phrase ([`refusal`]), which is all workerd shows the Worker.
//! Reads go through the same [`KvService::get`] as the REST API's, so the edge's cache,
//! `cache_ttl`, read-your-writes and cached absences behave the same on both.

mod refusal;
mod wire;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use driftkv_core::key::{parse_metadata, resolve_expiration, validate_key};
use driftkv_core::limits::{
    MAX_BULK_GET_KEYS, MAX_KEY_BYTES, MAX_LIST_LIMIT, MAX_SMALL_BODY_BYTES, MAX_VALUE_BYTES,
};
use driftkv_core::service::put;
use driftkv_core::time::unix_now_ms;
use driftkv_core::{
    KvError, KvService, ListCursor, ListRequest, LiveValue, Namespace, NamespaceId, Write,
    WriteKind, WriteOp,
};
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::{Access, Auth, Scope};
use crate::body::{linger, read_capped, read_json, Capped};
use crate::bulk_answer::{self, Gathered, Shape, ValueKind};
use crate::extract::Params;
use crate::metered::MeterLayer;
use crate::values::write_single;
use crate::Service;
pub(crate) use refusal::Refusal;
use wire::{
    key_from_path, metadata_header, BulkGetRequest, ListAnswer, ListedKey, EXPIRATION_HEADER,
    METADATA_HEADER, NAMESPACE_HEADER,
};

/// The HTTP service of an edge's workerd binding listener: the binding protocol over
/// `service`, behind `auth`, its requests counted and timed under the node label `node`
/// (routes `/`, `/{key}` and `/bulk/get`).
pub fn workerd_binding(
    service: Arc<dyn KvService>,
    auth: Auth,
    node: &str,
    tracing: crate::RequestTracing,
) -> Router {
    let router = Router::new()
        .route("/", get(list))
        .route("/bulk/get", post(bulk_get))
        .route("/{key}", get(get_value).put(put_value).delete(delete_value))
        // workerd names `fake-host` in every request; no browser can be made to.
        .with_state(Binding {
            service,
            auth: auth.also_answering("fake-host"),
        })
        .route_layer(CatchPanicLayer::custom(|_| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error: the request handler failed; the server is still running",
            )
            .into_response()
        }))
        .route_layer(MeterLayer::new(node))
        .fallback(|| async { Refusal::new(StatusCode::NOT_FOUND, "Not Found") })
        .method_not_allowed_fallback(|| async {
            Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        });
    crate::with_request_spans(router, tracing)
}

/// The one credentials check of a binding request. `account` owns the namespace the request
/// names (`None` when it names none that exists: the credentials are checked all the same,
/// so that only a caller who may use the binding learns which namespaces exist), `access` is
/// what the request does there. Scoped tokens check both here. On a tokenless loopback server
/// the request target's authority, if it names one (an absolute-form HTTP/1.1 target), must be
/// loopback as the `Host` header must, as on the REST API.
fn authorize(
    auth: &Auth,
    headers: &HeaderMap,
    uri: &Uri,
    account: Option<&str>,
    access: Access,
) -> Result<(), KvError> {
    let authority = uri.authority().map(|a| a.as_str());
    auth.check(headers, authority, Scope { account, access })
        .inspect_err(|e| {
            tracing::debug!(account, ?access, error = %e, "binding request refused");
        })
}

/// What the handlers share.
#[derive(Clone)]
struct Binding {
    service: Service,
    auth: Auth,
}

/// A handler's answer.
type Reply = Result<Response, Refusal>;

impl Binding {
    /// The namespace the request names, once its credentials allow `access` to it.
    async fn bind(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        access: Access,
    ) -> Result<Namespace, Refusal> {
        let named = self.named(headers).await;
        let account = named.as_ref().ok().map(|ns| ns.account_id.as_str());
        authorize(&self.auth, headers, uri, account, access)?;
        named
    }

    /// The namespace `X-Driftkv-Namespace` names.
    async fn named(&self, headers: &HeaderMap) -> Result<Namespace, Refusal> {
        let Some(value) = headers.get(NAMESPACE_HEADER) else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "Missing X-Driftkv-Namespace header: inject it with the namespace id in the \
                 workerd config (injectRequestHeaders)",
            ));
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        let id: NamespaceId = text.trim().parse().map_err(|_| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("X-Driftkv-Namespace {text:?} is not a namespace id (32 hex digits)"),
            )
        })?;
        match self.service.find_namespace(id).await {
            Err(KvError::NamespaceNotFound) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("KV namespace {id} not found (X-Driftkv-Namespace)"),
            )),
            found => Ok(found?),
        }
    }
}

/// The query parameters of `uri`, form-decoded (`+` is a space).
fn params(uri: &Uri) -> Result<Params, Refusal> {
    Params::from_uri(uri).map_err(|e| e.0.into())
}

/// The key the path of `uri` names (the `/{key}` routes).
fn key_of(uri: &Uri, params: &Params) -> Result<String, Refusal> {
    let segment = uri.path().trim_start_matches('/');
    let urlencoded = params
        .text("urlencoded")
        .is_some_and(|flag| flag.eq_ignore_ascii_case("true"));
    Ok(key_from_path(segment, urlencoded)?)
}

/// `get` and `getWithMetadata`: `GET /<key>?urlencoded=true[&cache_ttl=N]`. The raw value,
/// with `CF-KV-Metadata` and `CF-Expiration` where set; 404 (the binding's `null`) when the
/// key does not exist.
async fn get_value(State(binding): State<Binding>, uri: Uri, headers: HeaderMap) -> Reply {
    let namespace = binding.bind(&uri, &headers, Access::Read).await?;
    let params = params(&uri)?;
    let key = key_of(&uri, &params)?;
    let cache_ttl = params.whole_number("cache_ttl")?.map(|n| n as u64);
    let value = binding
        .service
        .get(&namespace.account_id, namespace.id, &key, cache_ttl)
        .await?
        .ok_or_else(Refusal::not_found)?;
    value_response(value)
}

fn value_response(value: LiveValue) -> Reply {
    let mut response = Response::new(Body::from(value.value));
    let headers = response.headers_mut();
    if let Some(metadata) = &value.metadata {
        headers.insert(METADATA_HEADER, metadata_header(metadata)?);
    }
    if let Some(expiration) = value.expiration {
        headers.insert(EXPIRATION_HEADER, HeaderValue::from(expiration));
    }
    Ok(response)
}

/// `get([...])` and `getWithMetadata([...])`: `POST /bulk/get`. 1 to 100 keys; the values
/// together at most 25 MiB.
async fn bulk_get(
    State(binding): State<Binding>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let namespace = binding.bind(&uri, &headers, Access::Read).await?;
    let request: BulkGetRequest = read_json(&headers, body, MAX_SMALL_BODY_BYTES).await?;
    let count = request.keys.len();
    if count == 0 {
        return Err(KvError::InvalidParameter("a bulk get needs at least 1 key".into()).into());
    }
    if count > MAX_BULK_GET_KEYS {
        return Err(KvError::BulkTooManyItems {
            count,
            limit: MAX_BULK_GET_KEYS,
        }
        .into());
    }
    let kind = ValueKind::parse(request.kind.as_deref())?;
    let cache_ttl = match &request.cache_ttl {
        Some(seconds) => Some(seconds.get("cacheTtl")?),
        None => None,
    };
    for (index, key) in request.keys.iter().enumerate() {
        validate_key(key).map_err(|e| e.in_item(index, key))?;
    }
    let mut entries = Gathered::with_capacity(count, kind);
    for key in request.distinct_keys() {
        let found = binding
            .service
            .get(&namespace.account_id, namespace.id, key, cache_ttl)
            .await?;
        entries.push(key.to_owned(), found).map_err(|_| {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Total size of the values exceeds the limit of {MAX_VALUE_BYTES} bytes"),
            )
        })?;
    }
    // Entries in the order asked for (workerd builds its Map in the object's property order,
    // which for keys that are not integers is this order), and no expiration in them: workerd
    // reads none.
    let shape = Shape {
        envelope: false,
        with_metadata: request.with_metadata,
        expiration: false,
    };
    Ok(bulk_answer::answer(entries, shape)?)
}

/// `list`: `GET /?key_count_limit=N&prefix=P&cursor=C`, each optional.
async fn list(State(binding): State<Binding>, uri: Uri, headers: HeaderMap) -> Reply {
    let namespace = binding.bind(&uri, &headers, Access::Read).await?;
    let params = params(&uri)?;
    let limit = params.number_in("key_count_limit", 1, MAX_LIST_LIMIT, MAX_LIST_LIMIT)?;
    let prefix = params.text("prefix").unwrap_or_default().to_owned();
    if prefix.len() > MAX_KEY_BYTES {
        // No key can start with it (Miniflare refuses it the same way).
        return Err(KvError::KeyTooLong {
            len: prefix.len(),
            limit: MAX_KEY_BYTES,
        }
        .into());
    }
    let cursor = match params.text("cursor") {
        None | Some("") => None,
        Some(text) => Some(ListCursor::decode(text, namespace.id, &prefix)?),
    };
    let page = binding
        .service
        .list(
            &namespace.account_id,
            namespace.id,
            ListRequest {
                prefix,
                limit,
                cursor,
            },
        )
        .await?;
    Ok(Json(ListAnswer {
        keys: page.keys.into_iter().map(ListedKey::from).collect(),
        list_complete: page.cursor.is_none(),
        cursor: page.cursor.map(|c| c.encode()),
    })
    .into_response())
}

/// `put`: `PUT /<key>?urlencoded=true[&expiration=S][&expiration_ttl=S]`, metadata in
/// `CF-KV-Metadata`, the value as the body (chunked when workerd does not know its length).
/// Everything but the value is checked before the body is read; the value is refused as soon
/// as it passes 25 MiB, and what the client still sends of a refused body is read and thrown
/// away (see [`linger`]) so that the client gets the answer.
async fn put_value(
    State(binding): State<Binding>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (reply, unread) = binding.put(&uri, &headers, body).await;
    if let Some(rest) = unread {
        linger(rest);
    }
    match reply {
        Ok(()) => StatusCode::OK.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

impl Binding {
    /// A put; with what is left unread of the body, if anything.
    async fn put(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
    ) -> (Result<(), Refusal>, Option<Body>) {
        let (namespace, key, metadata, expiration) = match self.put_request(uri, headers).await {
            Ok(request) => request,
            Err(refusal) => return (Err(refusal), Some(body)),
        };
        let value = match read_capped(headers, body, MAX_VALUE_BYTES).await {
            Ok(value) => value,
            Err(Capped::TooLarge { declared, rest }) => {
                let refusal = match declared {
                    Some(len) => Refusal::from(KvError::ValueTooLarge {
                        len: usize::try_from(len).unwrap_or(usize::MAX),
                        limit: MAX_VALUE_BYTES,
                    }),
                    None => Refusal::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "Value length exceeds limit of {MAX_VALUE_BYTES}: the streamed value passed it"
                        ),
                    ),
                };
                return (Err(refusal), Some(rest));
            }
            Err(Capped::Failed(e)) => return (Err(e.into()), None),
        };
        let write = put(key, value, metadata, expiration);
        (self.write(&namespace, write, WriteKind::Put).await, None)
    }

    /// A put's namespace, key, metadata and expiration, checked.
    async fn put_request(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(Namespace, String, Option<String>, Option<u64>), Refusal> {
        let namespace = self.bind(uri, headers, Access::Edit).await?;
        let params = params(uri)?;
        let key = key_of(uri, &params)?;
        let expiration = resolve_expiration(
            params.expiration("expiration")?,
            params.expiration("expiration_ttl")?,
            unix_now_ms() / 1000,
        )?;
        let metadata = match headers.get(METADATA_HEADER) {
            Some(json) => parse_metadata(json.as_bytes())?,
            None => None,
        };
        Ok((namespace, key, metadata, expiration))
    }

    /// Writes one key of `namespace`.
    async fn write(
        &self,
        namespace: &Namespace,
        write: Write,
        kind: WriteKind,
    ) -> Result<(), Refusal> {
        write_single(
            &self.service,
            &namespace.account_id,
            namespace.id,
            write,
            kind,
        )
        .await?;
        Ok(())
    }
}

/// `delete`: `DELETE /<key>?urlencoded=true`; succeeds whether or not the key exists.
async fn delete_value(State(binding): State<Binding>, uri: Uri, headers: HeaderMap) -> Reply {
    let namespace = binding.bind(&uri, &headers, Access::Edit).await?;
    let params = params(&uri)?;
    let key = key_of(&uri, &params)?;
    let delete = Write {
        key,
        op: WriteOp::Delete,
    };
    binding.write(&namespace, delete, WriteKind::Delete).await?;
    Ok(StatusCode::OK.into_response())
}
