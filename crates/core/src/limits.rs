//! The limits of Workers KV, in one place so that every layer checks the same numbers.

/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value: 25 MiB.
pub const MAX_VALUE_BYTES: usize = 25 * 1024 * 1024;
/// Largest metadata, measured as compact serialized JSON.
pub const MAX_METADATA_BYTES: usize = 1024;
/// Shortest `expiration_ttl`, and how far in the future an absolute `expiration` must be.
pub const MIN_EXPIRATION_TTL_SECS: u64 = 60;
/// Latest expiration a write may carry (unix seconds): the last second of the year 9999. Past
/// it a time no longer prints as a four-digit year, and a number past 2^53 no longer survives
/// JavaScript clients; an expiration that far away is a mistake or an attack, never a need.
pub const MAX_EXPIRATION_SECS: u64 = 253_402_300_799;
/// Smallest page size a REST key listing accepts.
pub const MIN_LIST_LIMIT: usize = 10;
/// Largest (and default) page size of a key listing.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Most items in one bulk write or bulk delete.
pub const MAX_BULK_ITEMS: usize = 10_000;
/// Largest bulk request body: 100 MB.
pub const MAX_BULK_BODY_BYTES: usize = 100_000_000;
/// Most keys in one bulk get.
pub const MAX_BULK_GET_KEYS: usize = 100;
/// Longest namespace title, in bytes.
pub const MAX_TITLE_BYTES: usize = 512;
/// Longest account id accepted in a path, in bytes.
pub const MAX_ACCOUNT_ID_BYTES: usize = 128;
/// Default and largest `per_page` of a namespace listing.
pub const DEFAULT_NAMESPACES_PER_PAGE: usize = 20;
/// Largest `per_page` of a namespace listing.
pub const MAX_NAMESPACES_PER_PAGE: usize = 100;
/// Largest body a value write may carry: the value plus room for multipart framing and a
/// metadata part. Anything bigger is refused from its `Content-Length` or as it streams in.
pub const MAX_VALUE_REQUEST_BYTES: usize = MAX_VALUE_BYTES + 64 * 1024;
/// Largest body for small JSON requests (namespace create/rename, bulk get).
pub const MAX_SMALL_BODY_BYTES: usize = 1024 * 1024;
