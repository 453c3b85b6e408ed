//! The API's request and response bodies.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// 32 lowercase hex characters.
    pub id: String,
    /// Unique within the account.
    pub title: String,
    /// Always true for driftkv: keys in paths are percent-encoded.
    #[serde(default)]
    pub supports_url_encoding: bool,
}

/// A key as a listing shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Key {
    /// The key.
    pub name: String,
    /// Unix seconds, when the key expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<u64>,
    /// The key's metadata, when it has some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// One page of a key listing.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyPage {
    /// The keys, in UTF-8 byte order. May be empty with more to come.
    pub keys: Vec<Key>,
    /// Where the next page starts; `None` on the last page.
    pub cursor: Option<String>,
}

/// Options of a single value write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PutOptions {
    /// Absolute expiration, unix seconds.
    pub expiration: Option<u64>,
    /// Expiration in seconds from now (wins over `expiration`).
    pub expiration_ttl: Option<u64>,
    /// JSON metadata stored with the value.
    pub metadata: Option<Value>,
}

/// One item of a bulk write: wrangler's bulk file format, which is also the API's body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BulkItem {
    /// The key.
    pub key: String,
    /// The value: text, or base64 when `base64` is set.
    pub value: String,
    /// Whether `value` is base64-encoded bytes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub base64: bool,
    /// Absolute expiration, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<u64>,
    /// Expiration in seconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_ttl: Option<u64>,
    /// JSON metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The answer to one bulk write or delete request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct BulkResult {
    /// Keys written or deleted.
    pub successful_key_count: u64,
    /// Keys the server did not take (the per-key rate limit).
    #[serde(default)]
    pub unsuccessful_keys: Vec<String>,
}

/// One value of a bulk read with metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueWithMetadata {
    /// The value, as text (or parsed JSON with `type: json`).
    pub value: Value,
    /// The key's metadata.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Unix seconds, when the key expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<u64>,
}
