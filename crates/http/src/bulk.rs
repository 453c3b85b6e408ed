//! Bulk routes: write, delete (both forms) and get.
//!
//! A bulk write or delete is validated whole before anything is written: one bad item fails
//! the request with that item's error (its index and key in the message), and nothing of it
//! is stored.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use driftkv_core::key::{normalize_metadata, resolve_expiration, validate_key};
use driftkv_core::limits::{
    MAX_BULK_BODY_BYTES, MAX_BULK_GET_KEYS, MAX_BULK_ITEMS, MAX_SMALL_BODY_BYTES, MAX_VALUE_BYTES,
};
use driftkv_core::service::put;
use driftkv_core::time::unix_now_ms;
use driftkv_core::{KvError, LiveValue, Write, WriteOp, WriteOutcome};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::body::read_json;
use crate::envelope::{ok, raw_metadata, ApiResult};
use crate::extract::NamespacePath;
use crate::Service;

/// Accepts base64 with or without padding, as clients differ.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Deserialize)]
struct BulkItem {
    key: String,
    value: String,
    #[serde(default)]
    base64: bool,
    expiration: Option<u64>,
    expiration_ttl: Option<u64>,
    #[serde(default)]
    metadata: Value,
}

impl BulkItem {
    fn into_write(self, now_secs: u64) -> Result<Write, KvError> {
        validate_key(&self.key)?;
        let value = if self.base64 {
            BASE64
                .decode(self.value.as_bytes())
                .map_err(|e| KvError::InvalidBase64 {
                    key: self.key.clone(),
                    reason: e.to_string(),
                })?
        } else {
            self.value.into_bytes()
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                limit: MAX_VALUE_BYTES,
            });
        }
        let metadata = normalize_metadata(&self.metadata)?;
        let expiration = resolve_expiration(self.expiration, self.expiration_ttl, now_secs)?;
        Ok(put(self.key, value, metadata, expiration))
    }
}

fn check_count(count: usize) -> Result<(), KvError> {
    if count > MAX_BULK_ITEMS {
        return Err(KvError::BulkTooManyItems {
            count,
            limit: MAX_BULK_ITEMS,
        });
    }
    Ok(())
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
    let items: Vec<BulkItem> = read_json(&headers, body, MAX_BULK_BODY_BYTES).await?;
    check_count(items.len())?;
    let now_secs = unix_now_ms() / 1000;
    let writes = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let key = item.key.clone();
            item.into_write(now_secs)
                .map_err(|e| e.in_item(index, &key))
        })
        .collect::<Result<Vec<_>, _>>()?;
    outcome_json(service.write(&path.account, path.id, writes).await?)
}

/// `POST .../bulk/delete` and the older `DELETE .../bulk`: a JSON array of key names.
pub async fn delete(
    State(service): State<Service>,
    path: NamespacePath,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let keys: Vec<String> = read_json(&headers, body, MAX_BULK_BODY_BYTES).await?;
    check_count(keys.len())?;
    let writes = keys
        .into_iter()
        .enumerate()
        .map(|(index, key)| match validate_key(&key) {
            Ok(()) => Ok(Write {
                key,
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
    keys: Vec<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    with_metadata: bool,
}

/// How bulk-get values are returned (the REST API's and the workerd binding's alike).
#[derive(Clone, Copy)]
pub(crate) enum ValueKind {
    Text,
    Json,
}

impl ValueKind {
    /// The kind a request's `type` names: `text` (the default) or `json`.
    pub(crate) fn parse(kind: Option<&str>) -> Result<Self, KvError> {
        match kind.unwrap_or("text") {
            "text" => Ok(ValueKind::Text),
            "json" => Ok(ValueKind::Json),
            other => Err(KvError::InvalidParameter(format!(
                "type must be 'text' or 'json', got {other:?}"
            ))),
        }
    }

    /// `value` (of `key`) as this kind, a piece of JSON: a string (invalid UTF-8 replaced),
    /// or the stored JSON text as it is (its object keys in their order), once checked.
    pub(crate) fn render(self, key: &str, value: &LiveValue) -> Result<Box<RawValue>, KvError> {
        match self {
            ValueKind::Text => {
                let text = String::from_utf8_lossy(&value.value);
                serde_json::value::to_raw_value(&text)
                    .map_err(|e| KvError::Internal(format!("cannot encode a string: {e}")))
            }
            ValueKind::Json => serde_json::from_slice(&value.value).map_err(|e| {
                KvError::InvalidParameter(format!(
                    "the value of key {key:?} is not valid JSON ({e}); request type 'text'"
                ))
            }),
        }
    }
}

/// `POST .../bulk/get`: `{"keys": [...], "type": "text"|"json", "withMetadata": bool}`.
pub async fn get(
    State(service): State<Service>,
    path: NamespacePath,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let request: BulkGet = read_json(&headers, body, MAX_SMALL_BODY_BYTES).await?;
    if request.keys.len() > MAX_BULK_GET_KEYS {
        return Err(KvError::BulkTooManyItems {
            count: request.keys.len(),
            limit: MAX_BULK_GET_KEYS,
        }
        .into());
    }
    let kind = ValueKind::parse(request.kind.as_deref())?;
    for (index, key) in request.keys.iter().enumerate() {
        validate_key(key).map_err(|e| e.in_item(index, key))?;
    }
    let mut values = BTreeMap::new();
    for key in request.keys {
        let entry = match service.get(&path.account, path.id, &key, None).await? {
            None => Value::Null,
            Some(value) if request.with_metadata => {
                let mut entry = json!({
                    "value": kind.render(&key, &value)?,
                    "metadata": raw_metadata(value.metadata.as_deref())?,
                });
                if let Some(expiration) = value.expiration {
                    entry["expiration"] = json!(expiration);
                }
                entry
            }
            Some(value) => serde_json::to_value(kind.render(&key, &value)?)
                .map_err(|e| KvError::Internal(format!("cannot take a rendered value: {e}")))?,
        };
        values.insert(key, entry);
    }
    ok(json!({ "values": values }))
}
