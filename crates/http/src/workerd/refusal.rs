//! Refusals: a status and a reason phrase.
//!
//! workerd ignores the body of a failed binding request; the Worker's error reads
//! `KV <OP> failed: <status> <reason phrase>`. So every refusal sets its own reason phrase
//! (hyper writes it from the [`ReasonPhrase`] response extension), and repeats it as a
//! plain-text body for anyone reading with another client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use driftkv_core::KvError;
use hyper::ext::ReasonPhrase;

/// The longest reason phrase sent (as Miniflare's), in bytes.
const MAX_REASON_BYTES: usize = 512;

/// A binding request refused.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    reason: String,
}

impl Refusal {
    /// A refusal with this status and reason.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason_phrase(&reason.into()),
        }
    }

    /// The answer to a key that does not exist: workerd's `get` returns `null` for it.
    pub fn not_found() -> Self {
        Refusal::new(StatusCode::NOT_FOUND, "Not Found")
    }
}

impl From<KvError> for Refusal {
    fn from(e: KvError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match e {
            KvError::KeyNotFound => Refusal::not_found(),
            // Never 404, which workerd's `get` would turn into `null`: a namespace that does
            // not exist is a configuration error the Worker must see.
            KvError::NamespaceNotFound => Refusal::new(
                StatusCode::BAD_REQUEST,
                "KV namespace not found (X-Driftkv-Namespace)",
            ),
            // Its message is written as the REST API reports it, a whole workerd error text.
            KvError::RateLimited {
                key,
                retry_after_secs,
                ..
            } => Refusal::new(
                status,
                format!(
                    "Too Many Requests: key {key:?} is written more than once per second; try again in {retry_after_secs} s"
                ),
            ),
            other => Refusal::new(status, capitalized(&other.to_string())),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, reason = %self.reason, "binding request failed");
        } else {
            tracing::debug!(status = %self.status, reason = %self.reason, "binding request refused");
        }
        let phrase = ReasonPhrase::try_from(self.reason.as_bytes());
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            self.reason,
        )
            .into_response();
        // `reason_phrase` leaves only bytes a reason phrase may hold.
        if let Ok(phrase) = phrase {
            response.extensions_mut().insert(phrase);
        }
        response
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `text` as a reason phrase: printable ASCII, anything else escaped (`\n`, `\u{e9}`), at
/// most [`MAX_REASON_BYTES`] long.
fn reason_phrase(text: &str) -> String {
    let mut phrase = String::with_capacity(text.len());
    for c in text.chars() {
        if c == ' ' || c.is_ascii_graphic() {
            phrase.push(c);
        } else {
            phrase.extend(c.escape_default());
        }
        if phrase.len() >= MAX_REASON_BYTES {
            phrase.truncate(MAX_REASON_BYTES);
            break;
        }
    }
    phrase
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_well_after_the_status() {
        let cases = [
            (
                KvError::ValueTooLarge {
                    len: 26214401,
                    limit: 26214400,
                },
                413,
                "Value length of 26214401 exceeds limit of 26214400",
            ),
            (
                KvError::KeyTooLong {
                    len: 513,
                    limit: 512,
                },
                414,
                "UTF-8 encoded length of 513 exceeds key length limit of 512",
            ),
            (KvError::KeyNotFound, 404, "Not Found"),
            (
                KvError::NamespaceNotFound,
                400,
                "KV namespace not found (X-Driftkv-Namespace)",
            ),
            (
                KvError::rate_limited("k".into(), driftkv_core::WriteKind::Put, 1),
                429,
                "Too Many Requests: key \"k\" is written more than once per second; try again in 1 s",
            ),
            (
                KvError::Forbidden("invalid API token".into()),
                403,
                "Authentication error: invalid API token",
            ),
        ];
        for (error, status, reason) in cases {
            let refusal = Refusal::from(error);
            assert_eq!(refusal.status.as_u16(), status);
            assert_eq!(refusal.reason, reason);
        }
    }

    #[test]
    fn reason_phrases_hold_only_printable_ascii() {
        assert_eq!(
            reason_phrase("key \"é\"\r\nX: y"),
            "key \"\\u{e9}\"\\r\\nX: y"
        );
        let long = reason_phrase(&"é".repeat(1000));
        assert!(long.len() <= MAX_REASON_BYTES);
        assert!(long.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
    }

    #[test]
    fn the_reason_phrase_goes_in_the_response() {
        let response = Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "Too big").into_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let phrase = response
            .extensions()
            .get::<ReasonPhrase>()
            .expect("a reason phrase");
        assert_eq!(phrase.as_bytes(), b"Too big");
    }
}
