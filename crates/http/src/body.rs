//! Request bodies, read with their size limits enforced before and while they stream in:
//! a declared `Content-Length` over the limit is refused without reading anything, and an
//! undeclared or lying one is cut off as soon as the limit is passed. Nothing over the limit is
//! ever buffered.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use driftkv_core::key::{parse_metadata, MAX_METADATA_TEXT_BYTES};
use driftkv_core::limits::{MAX_METADATA_BYTES, MAX_VALUE_BYTES, MAX_VALUE_REQUEST_BYTES};
use driftkv_core::KvError;
use http_body_util::BodyExt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The declared length of the body, if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Why a capped read ([`read_capped`]) returned no body.
#[derive(Debug)]
pub enum Capped {
    /// The body is longer than the limit: by its `Content-Length` (`declared`), or as it
    /// streamed in. `rest` is what was not read of it yet (see [`linger`]).
    TooLarge { declared: Option<u64>, rest: Body },
    /// The body could not be read.
    Failed(KvError),
}

/// Reads a whole body of at most `limit` bytes, as it streams in: a declared length over the
/// limit is refused before anything is read, and a body that passes the limit while streaming
/// (chunked, or lying about its length) is refused at the frame that passes it, so no more
/// than `limit` bytes are ever held.
pub async fn read_capped(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Bytes, Capped> {
    let declared = content_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Capped::TooLarge {
            declared,
            rest: body,
        });
    }
    // A body of one frame, the usual case, is kept as it is; more are gathered into a buffer
    // sized by the declared length.
    let mut first: Option<Bytes> = None;
    let mut gathered: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Capped::Failed(KvError::BadRequest(format!(
                "could not read the request body: {e}"
            )))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        len += data.len();
        if len > limit {
            return Err(Capped::TooLarge {
                declared,
                rest: body,
            });
        }
        if let Some(buffer) = &mut gathered {
            buffer.extend_from_slice(&data);
        } else if let Some(previous) = first.take() {
            let capacity = declared.map_or(len, |n| n as usize).max(len);
            let mut buffer = BytesMut::with_capacity(capacity);
            buffer.extend_from_slice(&previous);
            buffer.extend_from_slice(&data);
            gathered = Some(buffer);
        } else {
            first = Some(data);
        }
    }
    Ok(match gathered {
        Some(buffer) => buffer.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// Reads a whole body of at most `limit` bytes; `too_large` builds the error for a bigger one
/// from its size, when known.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    too_large: impl Fn(Option<u64>) -> KvError,
) -> Result<Bytes, KvError> {
    read_capped(headers, body, limit)
        .await
        .map_err(|capped| match capped {
            Capped::TooLarge { declared, .. } => too_large(declared),
            Capped::Failed(e) => e,
        })
}

/// How long the rest of a refused body is read and thrown away, at most (nginx's
/// `lingering_time` has the same default).
const LINGER: Duration = Duration::from_secs(30);

/// Reads what is left of a refused request body and throws it away, in the background, for up
/// to [`LINGER`], holding one frame at a time. A client that sends its whole body before it
/// reads the answer (workerd does) then gets the answer: a server that closed the connection
/// on unread data would make the kernel reset it, and the client would see a broken
/// connection instead of the refusal.
pub fn linger(rest: Body) {
    tokio::spawn(async move {
        let mut rest = rest;
        let drained = tokio::time::timeout(LINGER, async {
            while let Some(Ok(_)) = rest.frame().await {}
        });
        if drained.await.is_err() {
            tracing::debug!("stopped reading a refused request body after {LINGER:?}");
        }
    });
}

/// Reads a whole body of at most `limit` bytes; a larger one is 413.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, KvError> {
    read_limited(headers, body, limit, |n| {
        KvError::PayloadTooLarge(match n {
            Some(n) => format!("{n} bytes; this request accepts at most {limit}"),
            None => format!("this request accepts at most {limit} bytes"),
        })
    })
    .await
}

/// Reads and parses a JSON body of at most `limit` bytes.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, KvError> {
    parse_json(&read_body(headers, body, limit).await?)
}

fn invalid_json(e: serde_json::Error) -> KvError {
    KvError::BadRequest(format!("invalid JSON: {e}"))
}

/// A JSON array of which at most `N` items are kept; the rest are only counted, never built,
/// so that a body of millions of tiny items costs no more than its bytes.
pub struct Bounded<T, const N: usize> {
    items: Vec<T>,
    count: usize,
}

impl<T, const N: usize> Bounded<T, N> {
    /// The items, or the error for too many.
    pub fn into_inner(self) -> Result<Vec<T>, KvError> {
        if self.count > N {
            return Err(KvError::BulkTooManyItems {
                count: self.count,
                limit: N,
            });
        }
        Ok(self.items)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items<T, const N: usize>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Items<T, N> {
            type Value = Bounded<T, N>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
                while items.len() < N {
                    match seq.next_element()? {
                        Some(item) => items.push(item),
                        None => break,
                    }
                }
                let mut count = items.len();
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(Bounded { items, count })
            }
        }

        deserializer.deserialize_seq(Items::<T, N>(PhantomData))
    }
}

/// Parses JSON from bytes; malformed JSON is 400.
pub fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, KvError> {
    serde_json::from_slice(bytes).map_err(invalid_json)
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

/// The `Content-Type` of a request, empty when absent or not text.
pub fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Whether a value write with this `Content-Type` sends a `multipart/form-data` body (else its
/// body is the value itself).
pub fn is_multipart(content_type: &str) -> bool {
    content_type
        .get(..MULTIPART.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(MULTIPART))
}

const MULTIPART: &str = "multipart/form-data";

/// Reads the body of a value write: `multipart/form-data` with a `value` part and an optional
/// JSON `metadata` part, or else the raw body as the value.
pub async fn read_value(headers: &HeaderMap, body: Body) -> Result<ValuePayload, KvError> {
    let content_type = content_type(headers);
    if !is_multipart(content_type) {
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
        .for_field("metadata", MAX_METADATA_TEXT_BYTES as u64)
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
                len: MAX_METADATA_TEXT_BYTES + 1,
                limit: MAX_METADATA_BYTES,
            }
        }
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            value_too_large(None)
        }
        other => KvError::BadRequest(format!("malformed multipart body: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// A body streamed in these frames, with no declared length.
    fn streamed(frames: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> =
            frames.iter().map(|f| Ok(Bytes::from_static(f))).collect();
        Body::from_stream(futures::stream::iter(frames))
    }

    fn declaring(len: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        headers
    }

    #[tokio::test]
    async fn bodies_within_the_limit_are_read_whole() {
        let none = HeaderMap::new();
        let one = Bytes::from_static(b"one frame");
        let read = read_capped(&none, Body::from(one.clone()), 9).await;
        let read = read.expect("within the limit");
        // A single frame is kept as it came, not copied.
        assert_eq!(read.as_ptr(), one.as_ptr());
        let read = read_capped(&none, streamed(&[b"ab", b"", b"cd", b"e"]), 5).await;
        assert_eq!(read.expect("within the limit"), "abcde");
        let read = read_capped(&declaring(3), streamed(&[b"a", b"bc"]), 3).await;
        assert_eq!(read.expect("within the limit"), "abc");
        let empty = read_capped(&none, Body::empty(), 0).await;
        assert!(empty.expect("empty").is_empty());
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        let refused = read_capped(&declaring(11), streamed(&[b"0123456789", b"x"]), 10).await;
        let Err(Capped::TooLarge { declared, rest }) = refused else {
            panic!("refused from its declared length");
        };
        assert_eq!(declared, Some(11));
        let unread = rest.collect().await.expect("the rest").to_bytes();
        assert_eq!(unread, "0123456789x");
    }

    #[tokio::test]
    async fn a_stream_is_refused_at_the_frame_that_passes_the_limit() {
        let body = streamed(&[b"0123", b"4567", b"89", b"after"]);
        let Err(Capped::TooLarge { declared, rest }) =
            read_capped(&HeaderMap::new(), body, 9).await
        else {
            panic!("refused as it streamed");
        };
        assert_eq!(declared, None);
        // Reading stopped at the third frame: the fourth is still there.
        let unread = rest.collect().await.expect("the rest").to_bytes();
        assert_eq!(unread, "after");
        let limited = read_limited(&HeaderMap::new(), streamed(&[b"abc"]), 2, |n| {
            KvError::PayloadTooLarge(format!("{n:?}"))
        })
        .await;
        assert_eq!(limited, Err(KvError::PayloadTooLarge("None".into())));
    }
}
