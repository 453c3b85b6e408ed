//! Key, metadata and expiration validation shared by every layer that accepts a write.

use crate::error::KvError;
use crate::limits::{
    MAX_EXPIRATION_SECS, MAX_KEY_BYTES, MAX_METADATA_BYTES, MIN_EXPIRATION_TTL_SECS,
};

/// Checks a key name: 1..=512 bytes of UTF-8 (guaranteed by `&str`), and not `.` or `..`,
/// which cannot be addressed in a URL path.
pub fn validate_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidKey("key names must not be empty".into()));
    }
    if key == "." || key == ".." {
        return Err(KvError::InvalidKey(format!("illegal key name {key:?}")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::KeyTooLong {
            len: key.len(),
            limit: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// Turns client metadata into the compact JSON text that is stored, checking its size on that
/// serialized form. JSON `null` means "no metadata".
pub fn normalize_metadata(metadata: &serde_json::Value) -> Result<Option<String>, KvError> {
    if metadata.is_null() {
        return Ok(None);
    }
    let text =
        serde_json::to_string(metadata).map_err(|e| KvError::InvalidMetadata(e.to_string()))?;
    if text.len() > MAX_METADATA_BYTES {
        return Err(KvError::MetadataTooLarge {
            len: text.len(),
            limit: MAX_METADATA_BYTES,
        });
    }
    Ok(Some(text))
}

/// The longest metadata text parsed at all. The 1024-byte limit applies to the compacted JSON,
/// so the text as sent may carry generous whitespace; but a text this long cannot compact to
/// a size worth parsing, and parsing it (into a tree many times its size) is what a hostile
/// client would want.
pub const MAX_METADATA_TEXT_BYTES: usize = 16 * MAX_METADATA_BYTES;

/// Parses metadata sent as JSON text (a multipart part, a bulk item's field, a header) and
/// normalizes it. Text over [`MAX_METADATA_TEXT_BYTES`] is refused unread.
pub fn parse_metadata(text: &[u8]) -> Result<Option<String>, KvError> {
    if text.len() > MAX_METADATA_TEXT_BYTES {
        return Err(KvError::MetadataTooLarge {
            len: text.len(),
            limit: MAX_METADATA_BYTES,
        });
    }
    let value: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| KvError::InvalidMetadata(format!("metadata is not valid JSON: {e}")))?;
    normalize_metadata(&value)
}

/// Resolves the expiration of a write, in unix seconds, from the `expiration` and
/// `expiration_ttl` a client sent. `expiration_ttl` wins when both are given. Both must put
/// the expiration at least 60 seconds after `now_secs`.
pub fn resolve_expiration(
    expiration: Option<u64>,
    expiration_ttl: Option<u64>,
    now_secs: u64,
) -> Result<Option<u64>, KvError> {
    if let Some(ttl) = expiration_ttl {
        if ttl < MIN_EXPIRATION_TTL_SECS {
            return Err(KvError::InvalidExpiration(format!(
                "expiration_ttl of {ttl} is less than the minimum of {MIN_EXPIRATION_TTL_SECS} seconds"
            )));
        }
        let at = now_secs
            .checked_add(ttl)
            .filter(|at| *at <= MAX_EXPIRATION_SECS)
            .ok_or_else(|| {
                KvError::InvalidExpiration(format!(
                    "expiration_ttl of {ttl} is too large: it puts the expiration past {MAX_EXPIRATION_SECS} (the end of the year 9999)"
                ))
            })?;
        return Ok(Some(at));
    }
    if let Some(at) = expiration {
        let earliest = now_secs + MIN_EXPIRATION_TTL_SECS;
        if at < earliest {
            return Err(KvError::InvalidExpiration(format!(
                "expiration of {at} must be at least {MIN_EXPIRATION_TTL_SECS} seconds in the future (now is {now_secs})"
            )));
        }
        check_expiration_bound(at)?;
        return Ok(Some(at));
    }
    Ok(None)
}

/// Refuses an expiration past [`MAX_EXPIRATION_SECS`].
pub fn check_expiration_bound(at: u64) -> Result<(), KvError> {
    if at > MAX_EXPIRATION_SECS {
        return Err(KvError::InvalidExpiration(format!(
            "expiration of {at} is too far in the future: the latest is {MAX_EXPIRATION_SECS} (the end of the year 9999)"
        )));
    }
    Ok(())
}

/// Parses an expiration parameter (`expiration` or `expiration_ttl`) given as text.
pub fn parse_expiration_param(name: &str, text: &str) -> Result<u64, KvError> {
    text.trim().parse::<u64>().map_err(|_| {
        KvError::InvalidExpiration(format!(
            "{name} must be a whole number of seconds, got {text:?}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_checked() {
        assert!(validate_key("a").is_ok());
        assert!(validate_key("a b/c?d%e:f!").is_ok());
        assert!(validate_key(&"k".repeat(512)).is_ok());
        assert!(matches!(validate_key(""), Err(KvError::InvalidKey(_))));
        assert!(matches!(validate_key("."), Err(KvError::InvalidKey(_))));
        assert!(matches!(validate_key(".."), Err(KvError::InvalidKey(_))));
        assert!(validate_key("...").is_ok());
        assert_eq!(
            validate_key(&"k".repeat(513)),
            Err(KvError::KeyTooLong {
                len: 513,
                limit: 512
            })
        );
        // 171 three-byte characters are 513 bytes: the limit is on bytes, not characters.
        assert!(matches!(
            validate_key(&"€".repeat(171)),
            Err(KvError::KeyTooLong { len: 513, .. })
        ));
    }

    #[test]
    fn metadata_is_compacted_and_sized() {
        assert_eq!(
            parse_metadata(br#"{ "a" : 1 }"#).unwrap(),
            Some(r#"{"a":1}"#.to_string())
        );
        assert_eq!(parse_metadata(b"null").unwrap(), None);
        assert!(matches!(
            parse_metadata(b"{nope"),
            Err(KvError::InvalidMetadata(_))
        ));
        let big = json!({ "k": "x".repeat(1100) });
        assert!(matches!(
            normalize_metadata(&big),
            Err(KvError::MetadataTooLarge { .. })
        ));
        // Exactly 1024 bytes serialized is allowed.
        let exact = json!("x".repeat(1022));
        assert_eq!(normalize_metadata(&exact).unwrap().unwrap().len(), 1024);
    }

    #[test]
    fn expiration_rules() {
        let now = 1_000_000;
        assert_eq!(resolve_expiration(None, None, now).unwrap(), None);
        assert_eq!(
            resolve_expiration(None, Some(60), now).unwrap(),
            Some(now + 60)
        );
        assert!(resolve_expiration(None, Some(59), now).is_err());
        assert_eq!(
            resolve_expiration(Some(now + 60), None, now).unwrap(),
            Some(now + 60)
        );
        assert!(resolve_expiration(Some(now + 59), None, now).is_err());
        assert!(resolve_expiration(Some(5), None, now).is_err());
        // expiration_ttl wins over expiration, even when expiration alone would be invalid.
        assert_eq!(
            resolve_expiration(Some(5), Some(120), now).unwrap(),
            Some(now + 120)
        );
        assert!(resolve_expiration(None, Some(u64::MAX), now).is_err());
        // Far-future expirations are refused, whichever way they are given.
        let max = crate::limits::MAX_EXPIRATION_SECS;
        assert_eq!(resolve_expiration(Some(max), None, now).unwrap(), Some(max));
        assert!(matches!(
            resolve_expiration(Some(max + 1), None, now),
            Err(KvError::InvalidExpiration(_))
        ));
        assert!(resolve_expiration(Some(u64::MAX), None, now).is_err());
        assert!(resolve_expiration(None, Some(max - now + 1), now).is_err());
        assert_eq!(
            parse_expiration_param("expiration_ttl", "300").unwrap(),
            300
        );
        assert!(parse_expiration_param("expiration_ttl", "-1").is_err());
        assert!(parse_expiration_param("expiration_ttl", "1.5").is_err());
        assert!(parse_expiration_param("expiration", "soon").is_err());
    }
}
