//! Request bodies, read with their size limits enforced before and while they stream in:
//! a declared `Content-Length` over the limit is refused without reading anything, and an
//! undeclared or lying one is cut off as soon as the limit is passed. Nothing over the limit is
//! ever buffered.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use driftkv_core::key::parse_metadata;
use driftkv_core::limits::{MAX_METADATA_BYTES, MAX_VALUE_BYTES, MAX_VALUE_REQUEST_BYTES};
use driftkv_core::KvError;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

/// Largest `metadata` part read from a multipart body. The 1024-byte limit applies to the
/// compacted JSON, so the part itself may carry generous whitespace; anything past this cannot
/// compact to a valid size worth parsing.
const MAX_METADATA_PART_BYTES: usize = MAX_METADATA_BYTES * 16;

/// The declared length of the body, if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads a whole body of at most `limit` bytes; `too_large` builds the error for a bigger one
/// from its size, when known.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    too_large: impl Fn(Option<u64>) -> KvError,
) -> Result<Bytes, KvError> {
    let declared = content_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(declared));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(None)),
        Err(e) => Err(KvError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Reads and parses a JSON body of at most `limit` bytes.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, KvError> {
    let bytes = read_limited(headers, body, limit, |n| {
        KvError::PayloadTooLarge(match n {
            Some(n) => format!("{n} bytes; this request accepts at most {limit}"),
            None => format!("this request accepts at most {limit} bytes"),
        })
    })
    .await?;
    serde_json::from_slice(&bytes).map_err(|e| KvError::BadRequest(format!("invalid JSON: {e}")))
}

/// A value write's payload: the value and, from a multipart body, its metadata.
pub struct ValuePayload {
    pub value: Bytes,
    pub metadata: Option<String>,
}

fn value_too_large(len: Option<u64>) -> KvError {
    KvError::ValueTooLarge {
        len: len.map_or(MAX_VALUE_BYTES + 1, |n| n as usize),
        limit: MAX_VALUE_BYTES,
    }
}

/// Reads the body of a value write: `multipart/form-data` with a `value` part and an optional
/// JSON `metadata` part, or else the raw body as the value.
pub async fn read_value(headers: &HeaderMap, body: Body) -> Result<ValuePayload, KvError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        let value = read_limited(headers, body, MAX_VALUE_BYTES, value_too_large).await?;
        return Ok(ValuePayload {
            value,
            metadata: None,
        });
    }
    if content_length(headers).is_some_and(|n| n > MAX_VALUE_REQUEST_BYTES as u64) {
        return Err(value_too_large(content_length(headers)));
    }
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| KvError::BadRequest(format!("bad multipart content type: {e}")))?;
    let limits = multer::SizeLimit::new()
        .whole_stream(MAX_VALUE_REQUEST_BYTES as u64)
        .for_field("value", MAX_VALUE_BYTES as u64)
        .for_field("metadata", MAX_METADATA_PART_BYTES as u64)
        .per_field(MAX_VALUE_BYTES as u64);
    let mut multipart = multer::Multipart::with_constraints(
        body.into_data_stream(),
        boundary,
        multer::Constraints::new().size_limit(limits),
    );
    let mut value = None;
    let mut metadata = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("value") => value = Some(field.bytes().await.map_err(multipart_error)?),
            Some("metadata") => {
                metadata = parse_metadata(&field.bytes().await.map_err(multipart_error)?)?
            }
            // Other parts are read (bounded by the stream limit) and ignored.
            _ => {
                field.bytes().await.map_err(multipart_error)?;
            }
        }
    }
    let value = value
        .ok_or_else(|| KvError::BadRequest("the multipart body has no 'value' part".into()))?;
    Ok(ValuePayload { value, metadata })
}

fn multipart_error(e: multer::Error) -> KvError {
    match e {
        multer::Error::FieldSizeExceeded { field_name, .. }
            if field_name.as_deref() == Some("metadata") =>
        {
            KvError::MetadataTooLarge {
                len: MAX_METADATA_PART_BYTES + 1,
                limit: MAX_METADATA_BYTES,
            }
        }
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            value_too_large(None)
        }
        other => KvError::BadRequest(format!("malformed multipart body: {other}")),
    }
}
