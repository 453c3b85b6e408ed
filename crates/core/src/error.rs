//! Errors a client can see. Every variant carries the Cloudflare API error code and HTTP status
//! it is reported with, so that an unchanged Cloudflare client recognises it.
//!
//! Codes follow the Workers KV API where it is known (10000 auth, 10009 key not found, 10013
//! namespace not found, 10014 duplicate title, 7000/7001/7003 routing); the other validation
//! failures use codes from the same 100xx family, one per kind of failure, listed in the README.

/// A failure of a KV operation, as reported to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// No credentials were presented where they are required (401).
    #[error("Authentication error: {0}")]
    Unauthenticated(String),
    /// Credentials were presented but are not valid (403).
    #[error("Authentication error: {0}")]
    Forbidden(String),
    /// The key does not exist, or has expired (404).
    #[error("get: 'key not found'")]
    KeyNotFound,
    /// The namespace does not exist in this account (404).
    #[error("namespace not found")]
    NamespaceNotFound,
    /// Another namespace of the same account has this title (409).
    #[error("a namespace with this account ID and title already exists")]
    TitleTaken,
    /// The namespace title is empty or too long (400).
    #[error("invalid namespace title: {0}")]
    InvalidTitle(String),
    /// An identifier in the path (namespace id, account id) is malformed (400).
    #[error("could not route to {0}, perhaps your object identifier is invalid?")]
    InvalidIdentifier(String),
    /// The key is empty, `.` or `..` (400).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The key is longer than 512 bytes (414).
    #[error("UTF-8 encoded length of {len} exceeds key length limit of {limit}")]
    KeyTooLong { len: usize, limit: usize },
    /// The value is larger than 25 MiB (413).
    #[error("value length of {len} exceeds limit of {limit}")]
    ValueTooLarge { len: usize, limit: usize },
    /// The serialized metadata is larger than 1024 bytes (413).
    #[error("metadata length of {len} exceeds limit of {limit}")]
    MetadataTooLarge { len: usize, limit: usize },
    /// The metadata is not valid JSON (400).
    #[error("invalid metadata: {0}")]
    InvalidMetadata(String),
    /// `expiration` or `expiration_ttl` is malformed or too soon (400).
    #[error("invalid expiration: {0}")]
    InvalidExpiration(String),
    /// A query parameter or body field is out of range or malformed (400).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A list cursor is malformed or belongs to another listing (400).
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
    /// A bulk request has more items than allowed (400).
    #[error("bulk request has {count} items; the limit is {limit}")]
    BulkTooManyItems { count: usize, limit: usize },
    /// A bulk value marked `base64` does not decode (400).
    #[error("invalid base64 value for key {key:?}: {reason}")]
    InvalidBase64 { key: String, reason: String },
    /// The request body is malformed: bad JSON, bad multipart, wrong shape (400).
    #[error("could not parse request body: {0}")]
    BadRequest(String),
    /// The request body is larger than the route accepts (413).
    #[error("request body too large: {0}")]
    PayloadTooLarge(String),
    /// No route matches the path (404).
    #[error("No route for that URI")]
    RouteNotFound,
    /// The route exists but not with this method (405).
    #[error("Method not allowed for this route")]
    MethodNotAllowed,
    /// One item of a bulk request is invalid; reported with that item's code and status.
    #[error("item {index} (key {key:?}): {source}")]
    BulkItem {
        index: usize,
        key: String,
        source: Box<KvError>,
    },
    /// The key was written more often than the per-key write limit allows (429). Workers KV
    /// names the operation (`KV PUT failed`, `KV DELETE failed`); the client may try again
    /// after `retry_after_secs` (the response's `Retry-After`).
    #[error("KV {op} failed: 429 Too Many Requests: key {key:?} is written more than once per second; try again in {retry_after_secs} s")]
    RateLimited {
        key: String,
        op: WriteKind,
        retry_after_secs: u64,
    },
    /// The request conflicts with work the node is doing or with its state: another testbed
    /// experiment is running, or the cluster lacks what it needs (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Another node (the write region) could not be reached in time (503).
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// An error another node reported, passed on exactly as that node classified it.
    #[error("{message}")]
    Remote {
        status: u16,
        code: u32,
        message: String,
    },
    /// The node is taking as many requests as it may at once; the client should try again
    /// shortly (503, with `Retry-After`).
    #[error("service unavailable: overloaded, {limit} requests are in flight; try again shortly")]
    Overloaded { limit: usize },
    /// The request took longer than the node allows one to (408).
    #[error("request timeout: the request took longer than {secs} s")]
    RequestTimeout { secs: u64 },
    /// The request body arrived slower than the node allows (408).
    #[error("request timeout: {received} bytes of the body arrived in {secs} s, slower than the {min_rate} bytes a second allowed")]
    BodyTooSlow {
        received: u64,
        secs: u64,
        min_rate: u64,
    },
    /// An account or namespace is at its configured quota (403, as Cloudflare answers an
    /// account limit).
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The node cannot take writes until its storage has room again (507).
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    /// The node's storage engine cannot be used for now: it failed and refuses all writes
    /// until the health probe opens it again, or the probe is doing so; the client should try
    /// again shortly (503, with `Retry-After`).
    #[error("service unavailable: storage unavailable: {0}")]
    StorageUnavailable(String),
    /// Something failed inside the server; the message is safe to show (500).
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a single-key write does, as Workers KV names it in its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Put,
    Delete,
}

impl std::fmt::Display for WriteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteKind::Put => "PUT",
            WriteKind::Delete => "DELETE",
        })
    }
}

/// The `Retry-After` of [`KvError::StorageUnavailable`]: the health probe's default interval
/// (`storage.probe_interval_ms`), after which it has tried to open the engine again.
pub const STORAGE_RETRY_AFTER_SECS: u64 = 10;

impl KvError {
    /// The refusal of a single-key write by the rate limit, `retry_after_ms` before the key
    /// may be written again (rounded up to whole seconds, at least one, as `Retry-After`
    /// counts them).
    pub fn rate_limited(key: String, op: WriteKind, retry_after_ms: u64) -> KvError {
        KvError::RateLimited {
            key,
            op,
            retry_after_secs: retry_after_ms.div_ceil(1000).max(1),
        }
    }

    /// Seconds the client should wait before trying again (`Retry-After`), for the errors
    /// that say so.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            KvError::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            KvError::Overloaded { .. } => Some(1),
            KvError::StorageUnavailable(_) => Some(STORAGE_RETRY_AFTER_SECS),
            KvError::BulkItem { source, .. } => source.retry_after_secs(),
            _ => None,
        }
    }

    /// This error, as the failure of item `index` (key `key`) of a bulk request.
    pub fn in_item(self, index: usize, key: &str) -> KvError {
        KvError::BulkItem {
            index,
            key: key.to_owned(),
            source: Box::new(self),
        }
    }

    /// The Cloudflare API error code reported in the `errors` array.
    pub fn code(&self) -> u32 {
        match self {
            KvError::Unauthenticated(_) | KvError::Forbidden(_) => 10000,
            KvError::BadRequest(_) => 10001,
            KvError::Internal(_) => 10002,
            KvError::KeyNotFound => 10009,
            KvError::NamespaceNotFound => 10013,
            KvError::TitleTaken => 10014,
            KvError::InvalidTitle(_) => 10019,
            KvError::InvalidKey(_) => 10020,
            KvError::KeyTooLong { .. } => 10025,
            KvError::ValueTooLarge { .. } => 10033,
            KvError::MetadataTooLarge { .. } => 10034,
            KvError::InvalidMetadata(_) => 10035,
            KvError::InvalidExpiration(_) => 10037,
            KvError::InvalidParameter(_) => 10038,
            KvError::InvalidCursor(_) => 10039,
            KvError::PayloadTooLarge(_) => 10040,
            KvError::BulkTooManyItems { .. } => 10041,
            KvError::InvalidBase64 { .. } => 10042,
            KvError::RouteNotFound => 7000,
            KvError::MethodNotAllowed => 7001,
            KvError::InvalidIdentifier(_) => 7003,
            KvError::BulkItem { source, .. } => source.code(),
            KvError::Unavailable(_) => 10050,
            KvError::RateLimited { .. } => 10049,
            KvError::Conflict(_) => 10051,
            KvError::Overloaded { .. } | KvError::StorageUnavailable(_) => 10050,
            KvError::RequestTimeout { .. } | KvError::BodyTooSlow { .. } => 10052,
            KvError::QuotaExceeded(_) => 10053,
            KvError::InsufficientStorage(_) => 10054,
            KvError::Remote { code, .. } => *code,
        }
    }

    /// The HTTP status the error is reported with.
    pub fn status(&self) -> u16 {
        match self {
            KvError::Unauthenticated(_) => 401,
            KvError::Forbidden(_) => 403,
            KvError::KeyNotFound | KvError::NamespaceNotFound | KvError::RouteNotFound => 404,
            KvError::MethodNotAllowed => 405,
            KvError::TitleTaken | KvError::Conflict(_) => 409,
            KvError::KeyTooLong { .. } => 414,
            KvError::ValueTooLarge { .. }
            | KvError::MetadataTooLarge { .. }
            | KvError::PayloadTooLarge(_) => 413,
            KvError::Internal(_) => 500,
            KvError::BulkItem { source, .. } => source.status(),
            KvError::Unavailable(_)
            | KvError::Overloaded { .. }
            | KvError::StorageUnavailable(_) => 503,
            KvError::RequestTimeout { .. } | KvError::BodyTooSlow { .. } => 408,
            KvError::QuotaExceeded(_) => 403,
            KvError::InsufficientStorage(_) => 507,
            KvError::RateLimited { .. } => 429,
            KvError::Remote { status, .. } => *status,
            KvError::InvalidTitle(_)
            | KvError::InvalidIdentifier(_)
            | KvError::InvalidKey(_)
            | KvError::InvalidMetadata(_)
            | KvError::InvalidExpiration(_)
            | KvError::InvalidParameter(_)
            | KvError::InvalidCursor(_)
            | KvError::BulkTooManyItems { .. }
            | KvError::InvalidBase64 { .. }
            | KvError::BadRequest(_) => 400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_match_the_spec() {
        assert_eq!(
            (KvError::KeyNotFound.status(), KvError::KeyNotFound.code()),
            (404, 10009)
        );
        assert_eq!(KvError::NamespaceNotFound.code(), 10013);
        assert_eq!(
            (KvError::TitleTaken.status(), KvError::TitleTaken.code()),
            (409, 10014)
        );
        let too_long = KvError::KeyTooLong {
            len: 513,
            limit: 512,
        };
        assert_eq!(too_long.status(), 414);
        assert_eq!(
            too_long.to_string(),
            "UTF-8 encoded length of 513 exceeds key length limit of 512"
        );
        assert_eq!(KvError::ValueTooLarge { len: 2, limit: 1 }.status(), 413);
        assert_eq!(KvError::Forbidden("x".into()).status(), 403);
        assert_eq!(KvError::Unauthenticated("x".into()).code(), 10000);
        assert_eq!(KvError::KeyNotFound.to_string(), "get: 'key not found'");
        let item = KvError::BulkItem {
            index: 3,
            key: "k".into(),
            source: Box::new(too_long),
        };
        assert_eq!((item.status(), item.code()), (414, 10025));
        assert!(item.to_string().starts_with("item 3 (key \"k\"): UTF-8"));
    }

    #[test]
    fn rate_limits_name_the_operation_and_when_to_retry() {
        let delete = KvError::rate_limited("k".into(), WriteKind::Delete, 1);
        assert_eq!((delete.status(), delete.code()), (429, 10049));
        assert!(delete.to_string().starts_with("KV DELETE failed: 429"));
        assert_eq!(delete.retry_after_secs(), Some(1));
        let put = KvError::rate_limited("k".into(), WriteKind::Put, 1001);
        assert!(put.to_string().starts_with("KV PUT failed: 429"));
        assert_eq!(put.retry_after_secs(), Some(2));
        assert_eq!(KvError::KeyNotFound.retry_after_secs(), None);
    }
}
