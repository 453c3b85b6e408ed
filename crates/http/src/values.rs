//! Single-key routes: write, read, delete a value; read its metadata; list keys.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use driftkv_core::key::resolve_expiration;
use driftkv_core::limits::{MAX_LIST_LIMIT, MIN_LIST_LIMIT};
use driftkv_core::service::put;
use driftkv_core::time::unix_now_ms;
use driftkv_core::{KvError, ListCursor, ListRequest, NamespaceId, Write, WriteKind, WriteOp};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::body::read_value;
use crate::envelope::{ok, ok_no_result, ok_with_info, raw_metadata, ApiResult};
use crate::extract::{KeyPath, NamespacePath, Params};
use crate::Service;

/// `PUT .../values/{key}`: raw body or multipart, with `expiration`/`expiration_ttl` in the
/// query. The limits are checked before the body is read.
pub async fn put_value(
    State(service): State<Service>,
    path: KeyPath,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let expiration = resolve_expiration(
        params.expiration("expiration")?,
        params.expiration("expiration_ttl")?,
        unix_now_ms() / 1000,
    )?;
    let payload = read_value(&headers, body).await?;
    let write = put(path.key, payload.value, payload.metadata, expiration);
    write_one(&service, &path.account, path.id, write, WriteKind::Put).await
}

/// A single-key write: a write the per-key rate limit refused is a 429 naming the operation,
/// with `Retry-After`.
async fn write_one(
    service: &Service,
    account: &str,
    id: NamespaceId,
    write: Write,
    kind: WriteKind,
) -> ApiResult {
    write_single(service, account, id, write, kind).await?;
    ok_no_result()
}

/// Writes one key; a write the per-key rate limit refused is [`KvError::RateLimited`], naming
/// the operation and when the key takes writes again.
pub(crate) async fn write_single(
    service: &Service,
    account: &str,
    id: NamespaceId,
    write: Write,
    kind: WriteKind,
) -> Result<(), KvError> {
    let outcome = service.write(account, id, vec![write]).await?;
    match outcome.unsuccessful.into_iter().next() {
        Some(key) => Err(KvError::rate_limited(key, kind, outcome.retry_after_ms)),
        None => Ok(()),
    }
}

/// `GET .../values/{key}?cache_ttl=`: the raw bytes, with an `expiration` header where one is
/// set. `cache_ttl` (seconds) is how long an edge may serve the result from its cache.
pub async fn get_value(State(service): State<Service>, path: KeyPath, params: Params) -> ApiResult {
    let cache_ttl = params.whole_number("cache_ttl")?.map(|n| n as u64);
    let value = service
        .get(&path.account, path.id, &path.key, cache_ttl)
        .await?
        .ok_or(KvError::KeyNotFound)?;
    // Built in place: a separate header map merged into the response would cost a second
    // allocation on every read.
    let mut response = Response::new(Body::from(value.value));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(expiration) = value.expiration {
        headers.insert("expiration", HeaderValue::from(expiration));
    }
    Ok(response)
}

/// `DELETE .../values/{key}`: succeeds whether or not the key exists.
pub async fn delete_value(State(service): State<Service>, path: KeyPath) -> ApiResult {
    let delete = Write {
        key: path.key,
        op: WriteOp::Delete,
    };
    write_one(&service, &path.account, path.id, delete, WriteKind::Delete).await
}

/// `GET .../metadata/{key}`: the metadata JSON, `null` when the key has none.
pub async fn get_metadata(State(service): State<Service>, path: KeyPath) -> ApiResult {
    let value = service
        .get(&path.account, path.id, &path.key, None)
        .await?
        .ok_or(KvError::KeyNotFound)?;
    ok(raw_metadata(value.metadata.as_deref())?)
}

/// A route ending in `values/` or `metadata/` names the empty key, which cannot exist.
pub async fn empty_key() -> ApiResult {
    Err(KvError::InvalidKey("key names must not be empty".into()).into())
}

#[derive(Serialize)]
struct KeyJson {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Box<RawValue>>,
}

/// `GET .../keys?prefix=&limit=&cursor=`: one page of live keys in UTF-8 byte order. The
/// cursor is empty on the last page; a page may be short, or empty, with more to come.
pub async fn list_keys(
    State(service): State<Service>,
    path: NamespacePath,
    params: Params,
) -> ApiResult {
    let limit = params.number_in("limit", MIN_LIST_LIMIT, MAX_LIST_LIMIT, MAX_LIST_LIMIT)?;
    let prefix = params.text("prefix").unwrap_or_default().to_owned();
    let cursor = match params.text("cursor") {
        None | Some("") => None,
        Some(text) => Some(ListCursor::decode(text, path.id, &prefix)?),
    };
    let page = service
        .list(
            &path.account,
            path.id,
            ListRequest {
                prefix,
                limit,
                cursor,
            },
        )
        .await?;
    let keys = page
        .keys
        .into_iter()
        .map(|k| {
            Ok(KeyJson {
                metadata: raw_metadata(k.metadata.as_deref())?,
                name: k.name,
                expiration: k.expiration,
            })
        })
        .collect::<Result<Vec<_>, KvError>>()?;
    let cursor = page.cursor.map(|c| c.encode()).unwrap_or_default();
    ok_with_info(&keys, json!({ "count": keys.len(), "cursor": cursor }))
}
