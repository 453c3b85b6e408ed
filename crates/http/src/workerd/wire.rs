//! The binding protocol's wire shapes: how a key travels in the path, the bulk-get body and
//! answer, the list answer, and the metadata header.

use std::collections::HashSet;

use axum::http::HeaderValue;
use driftkv_core::key::validate_key;
use driftkv_core::{KeyInfo, KvError};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

/// The request header naming the namespace (its id). workerd's config injects it.
pub const NAMESPACE_HEADER: &str = "x-driftkv-namespace";
/// A value's metadata, as JSON: sent with a put, answered with a get.
pub const METADATA_HEADER: &str = "cf-kv-metadata";
/// A value's expiration in unix seconds, answered with a get (Miniflare sends it; workerd
/// does not read it).
pub const EXPIRATION_HEADER: &str = "cf-expiration";

/// The key a request path names. workerd sends the key as one path segment, percent-encoded,
/// with `urlencoded=true`; without that flag the segment is the key as it is (as Miniflare
/// reads it). Query-string rules (`+` as space) do not apply to the path.
pub fn key_from_path(segment: &str, urlencoded: bool) -> Result<String, KvError> {
    let key = if urlencoded {
        percent_decoded(segment)?
    } else {
        segment.to_owned()
    };
    validate_key(&key)?;
    Ok(key)
}

/// `segment` percent-decoded, strictly: a `%` must start an escape of two hex digits and the
/// result must be UTF-8 (as JavaScript's `decodeURIComponent`, which Miniflare uses).
fn percent_decoded(segment: &str) -> Result<String, KvError> {
    let bytes = segment.as_bytes();
    let malformed = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    let decoded = percent_decode_str(segment).decode_utf8();
    match decoded {
        Ok(key) if !malformed => Ok(key.into_owned()),
        _ => Err(KvError::InvalidKey(format!(
            "could not URL-decode the key name {segment:?}"
        ))),
    }
}

/// Stored metadata (compact JSON) as a header value. JSON allows any character but `"` and
/// `\` unescaped inside strings, while a header value must be visible ASCII to pass every
/// HTTP stack unharmed, so non-ASCII characters (and DEL) are written as `\u` escapes: the
/// same JSON value.
pub fn metadata_header(json: &str) -> Result<HeaderValue, KvError> {
    let mut ascii = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && c != '\x7f' {
            ascii.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    HeaderValue::from_str(&ascii)
        .map_err(|e| KvError::Internal(format!("stored metadata makes no header: {e}")))
}

/// The body of `POST /bulk/get`, as workerd builds it.
#[derive(Debug, Deserialize)]
pub struct BulkGetRequest {
    pub keys: Vec<String>,
    /// `text` (the default) or `json`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(rename = "withMetadata", default)]
    pub with_metadata: bool,
    /// The reads' `cacheTtl`, which workerd sends as a string of digits.
    #[serde(rename = "cacheTtl")]
    pub cache_ttl: Option<Seconds>,
}

/// A number of seconds sent as a string (as workerd does) or as a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Seconds {
    Text(String),
    Number(u64),
}

impl Seconds {
    /// The number of seconds; `name` names the field in errors.
    pub fn get(&self, name: &str) -> Result<u64, KvError> {
        match self {
            Seconds::Number(n) => Ok(*n),
            Seconds::Text(text) => text.trim().parse().map_err(|_| {
                KvError::InvalidParameter(format!(
                    "{name} must be a whole number of seconds, got {text:?}"
                ))
            }),
        }
    }
}

impl BulkGetRequest {
    /// The keys to read, each once, in the order first asked for.
    pub fn distinct_keys(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.keys
            .iter()
            .map(String::as_str)
            .filter(|key| seen.insert(*key))
            .collect()
    }
}

/// The answer of a listing, `GET /?key_count_limit=&prefix=&cursor=`.
#[derive(Debug, Serialize)]
pub struct ListAnswer {
    pub keys: Vec<ListedKey>,
    pub list_complete: bool,
    /// Where the next page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One key of a listing. `metadata` is the JSON text as a JSON *string*: workerd parses it.
#[derive(Debug, Serialize)]
pub struct ListedKey {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

impl From<KeyInfo> for ListedKey {
    fn from(key: KeyInfo) -> Self {
        ListedKey {
            name: key.name,
            expiration: key.expiration,
            metadata: key.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn keys_are_percent_decoded_only_when_urlencoded() {
        assert_eq!(key_from_path("a%2Fb%20c", true).unwrap(), "a/b c");
        // `+` is literal in a path; `%2B` is a plus too.
        assert_eq!(key_from_path("a+b%2B", true).unwrap(), "a+b+");
        assert_eq!(key_from_path("%C3%A9t%C3%A9", true).unwrap(), "été");
        assert_eq!(key_from_path("%25", true).unwrap(), "%");
        assert_eq!(key_from_path("a%2Fb", false).unwrap(), "a%2Fb");
        for bad in ["%", "%2", "%zz", "a%2", "%FF", "%C3"] {
            assert!(
                matches!(key_from_path(bad, true), Err(KvError::InvalidKey(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            key_from_path("%2E", true),
            Err(KvError::InvalidKey(_))
        ));
        assert!(matches!(
            key_from_path(&"k".repeat(513), true),
            Err(KvError::KeyTooLong { len: 513, .. })
        ));
    }

    #[test]
    fn metadata_headers_are_ascii_and_the_same_json() {
        for metadata in [
            json!({"a": 1}),
            json!({"owner": "Zoë", "emoji": "🦀", "del": "\u{7f}", "nl": "a\nb"}),
            json!(["\"quoted\"", "back\\slash"]),
        ] {
            let text = serde_json::to_string(&metadata).unwrap();
            let header = metadata_header(&text).unwrap();
            let bytes = header.as_bytes();
            assert!(bytes.iter().all(|b| (0x20..0x7f).contains(b)), "{header:?}");
            let back: Value = serde_json::from_slice(bytes).unwrap();
            assert_eq!(back, metadata);
        }
        assert_eq!(
            metadata_header(r#"{"k":"é🦀"}"#).unwrap(),
            r#"{"k":"\u00e9\ud83e\udd80"}"#
        );
    }

    #[test]
    fn bulk_requests_parse_as_workerd_sends_them() {
        let request: BulkGetRequest = serde_json::from_str(
            r#"{"keys":["a","b","a"],"type":"json","withMetadata":true,"cacheTtl":"90"}"#,
        )
        .unwrap();
        assert_eq!(request.distinct_keys(), ["a", "b"]);
        assert_eq!(request.kind.as_deref(), Some("json"));
        assert!(request.with_metadata);
        assert_eq!(request.cache_ttl.unwrap().get("cacheTtl").unwrap(), 90);
        let bare: BulkGetRequest = serde_json::from_str(r#"{"keys":[]}"#).unwrap();
        assert!(bare.kind.is_none() && !bare.with_metadata && bare.cache_ttl.is_none());
        let number: BulkGetRequest =
            serde_json::from_str(r#"{"keys":["k"],"cacheTtl":60}"#).unwrap();
        assert_eq!(number.cache_ttl.unwrap().get("cacheTtl").unwrap(), 60);
        let bad: BulkGetRequest =
            serde_json::from_str(r#"{"keys":["k"],"cacheTtl":"-5"}"#).unwrap();
        assert!(matches!(
            bad.cache_ttl.unwrap().get("cacheTtl"),
            Err(KvError::InvalidParameter(_))
        ));
    }

    #[test]
    fn answers_serialize_as_workerd_reads_them() {
        let list = ListAnswer {
            keys: vec![
                ListedKey::from(KeyInfo {
                    name: "k".into(),
                    expiration: Some(2_000_000_000),
                    metadata: Some(r#"{"a":1}"#.into()),
                }),
                ListedKey::from(KeyInfo {
                    name: "bare".into(),
                    expiration: None,
                    metadata: None,
                }),
            ],
            list_complete: false,
            cursor: Some("c1".into()),
        };
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"{"keys":[{"name":"k","expiration":2000000000,"metadata":"{\"a\":1}"},{"name":"bare"}],"list_complete":false,"cursor":"c1"}"#
        );
        let last = ListAnswer {
            keys: vec![],
            list_complete: true,
            cursor: None,
        };
        assert_eq!(
            serde_json::to_string(&last).unwrap(),
            r#"{"keys":[],"list_complete":true}"#
        );
    }
}
