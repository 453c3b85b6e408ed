//! Bulk routes: write, delete (both forms) and get.
//!
//! A bulk write or delete is validated whole before anything is written: one bad item fails
//! the request with that item's error (its index and key in the message), and nothing of it
//! is stored.

use std::borrow::Cow;
use std::collections::BTreeSet;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use bytes::Bytes;
use driftkv_core::key::{parse_metadata, resolve_expiration, validate_key};
use driftkv_core::limits::{
    MAX_BULK_BODY_BYTES, MAX_BULK_GET_KEYS, MAX_BULK_ITEMS, MAX_SMALL_BODY_BYTES, MAX_VALUE_BYTES,
};
use driftkv_core::service::put;
use driftkv_core::time::unix_now_ms;
use driftkv_core::{KvError, Write, WriteOp, WriteOutcome};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::body::{parse_json, read_body, read_json, Bounded};
use crate::bulk_answer::{self, Gathered, Shape, ValueKind};
use crate::envelope::{ok, ApiResult};
use crate::extract::NamespacePath;
use crate::Service;

/// Accepts base64 with or without padding, as clients differ.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One item of a bulk write, its strings borrowed from the request body where they hold no
/// escape, so that parsing a 100 MB body does not copy it.
#[derive(Deserialize)]
struct BulkItem<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
    #[serde(default)]
    base64: bool,
    expiration: Option<u64>,
    expiration_ttl: Option<u64>,
    /// Kept as its JSON text until its size is known to be small enough to parse.
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

impl BulkItem<'_> {
    /// The write, its value a slice of `body` (the request's bytes) when it needs no decoding.
    fn into_write(self, body: &Bytes, now_secs: u64) -> Result<Write, KvError> {
        validate_key(&self.key)?;
        let value = if self.base64 {
            Bytes::from(BASE64.decode(self.value.as_bytes()).map_err(|e| {
                KvError::InvalidBase64 {
                    key: self.key.to_string(),
                    reason: e.to_string(),
                }
            })?)
        } else {
            match self.value {
                Cow::Borrowed(text) => body.slice_ref(text.as_bytes()),
                Cow::Owned(text) => Bytes::from(text),
            }
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                limit: MAX_VALUE_BYTES,
            });
        }
        let metadata = match self.metadata {
            None => None,
            Some(raw) => parse_metadata(raw.get().as_bytes())?,
        };
        let expiration = resolve_expiration(self.expiration, self.expiration_ttl, now_secs)?;
        Ok(put(self.key.into_owned(), value, metadata, expiration))
    }
}

fn outcome_json(outcome: WriteOutcome) -> ApiResult {
    ok(
        json!({ "successful_key_count": outcome.successful, "unsuccessful_keys": outcome.unsuccessful }),
    )
}

/// `PUT .../bulk`: a JSON array of `{key, value, base64?, expiration?, expiration_ttl?, metadata?}`.
pub async fn write(
    State(service): State<Service>,
    path: NamespacePath,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = read_body(&headers, body, MAX_BULK_BODY_BYTES).await?;
    let items = parse_json::<Bounded<BulkItem, MAX_BULK_ITEMS>>(&bytes)?.into_inner()?;
    let now_secs = unix_now_ms() / 1000;
    let writes = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let key = item.key.to_string();
            item.into_write(&bytes, now_secs)
                .map_err(|e| e.in_item(index, &key))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The values are slices of the body: it goes once the node has them stored, not when the
    // answer does.
    drop(bytes);
    outcome_json(service.write(&path.account, path.id, writes).await?)
}

/// `POST .../bulk/delete` and the older `DELETE .../bulk`: a JSON array of key names.
pub async fn delete(
    State(service): State<Service>,
    path: NamespacePath,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = read_body(&headers, body, MAX_BULK_BODY_BYTES).await?;
    let keys = parse_json::<Bounded<Cow<str>, MAX_BULK_ITEMS>>(&bytes)?.into_inner()?;
    let writes = keys
        .into_iter()
        .enumerate()
        .map(|(index, key)| match validate_key(&key) {
            Ok(()) => Ok(Write {
                key: key.into_owned(),
                op: WriteOp::Delete,
            }),
            Err(e) => Err(e.in_item(index, &key)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    outcome_json(service.write(&path.account, path.id, writes).await?)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkGet {
    keys: Bounded<String, MAX_BULK_GET_KEYS>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    with_metadata: bool,
}

/// `POST .../bulk/get`: `{"keys": [...], "type": "text"|"json", "withMetadata": bool}`, answered
/// `{"values": {key: value-or-null}}` (or `{key: {"value", "metadata", "expiration"?}}` with
/// metadata), the keys in UTF-8 order, streamed (see [`crate::bulk_answer`]).
pub async fn get(
    State(service): State<Service>,
    path: NamespacePath,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let request: BulkGet = read_json(&headers, body, MAX_SMALL_BODY_BYTES).await?;
    let keys = request.keys.into_inner()?;
    let kind = ValueKind::parse(request.kind.as_deref())?;
    for (index, key) in keys.iter().enumerate() {
        validate_key(key).map_err(|e| e.in_item(index, key))?;
    }
    let keys: BTreeSet<String> = keys.into_iter().collect();
    let mut entries = Gathered::with_capacity(keys.len(), kind);
    for key in keys {
        let found = service.get(&path.account, path.id, &key, None).await?;
        entries.push(key, found)?;
    }
    let shape = Shape {
        envelope: true,
        with_metadata: request.with_metadata,
        expiration: true,
    };
    Ok(bulk_answer::answer(entries, shape)?)
}
