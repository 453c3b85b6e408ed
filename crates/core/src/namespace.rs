//! Namespaces: named, per-account containers of keys.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::limits::{MAX_ACCOUNT_ID_BYTES, MAX_TITLE_BYTES};
use crate::record::Version;

/// A namespace id: 16 random bytes, shown as 32 lowercase hex characters like Cloudflare's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamespaceId(pub [u8; 16]);

impl NamespaceId {
    /// A fresh random id.
    pub fn random() -> Self {
        NamespaceId(rand::random())
    }
}

impl fmt::Display for NamespaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NamespaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NamespaceId({self})")
    }
}

impl FromStr for NamespaceId {
    type Err = KvError;

    /// Accepts exactly 32 hex characters (either case).
    fn from_str(s: &str) -> Result<Self, KvError> {
        let invalid = || KvError::InvalidIdentifier(format!("namespace {s:?}"));
        if s.len() != 32 {
            return Err(invalid());
        }
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id).map_err(|_| invalid())?;
        Ok(NamespaceId(id))
    }
}

/// A namespace as stored: which account owns it, its title, and the version of its last change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub id: NamespaceId,
    pub account_id: String,
    pub title: String,
    pub version: Version,
}

impl Namespace {
    /// Encodes the namespace for storage.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("postcard encoding into a Vec")
    }

    /// Decodes a stored namespace.
    pub fn decode(bytes: &[u8]) -> Result<Self, KvError> {
        postcard::from_bytes(bytes)
            .map_err(|e| KvError::Internal(format!("corrupt namespace record: {e}")))
    }
}

/// Checks a namespace title: non-empty, at most 512 bytes.
pub fn validate_title(title: &str) -> Result<(), KvError> {
    if title.trim().is_empty() {
        return Err(KvError::InvalidTitle("the title must not be empty".into()));
    }
    if title.len() > MAX_TITLE_BYTES {
        return Err(KvError::InvalidTitle(format!(
            "the title is {} bytes long; the limit is {MAX_TITLE_BYTES}",
            title.len()
        )));
    }
    Ok(())
}

/// Checks an account id taken from a request path.
pub fn validate_account_id(account_id: &str) -> Result<(), KvError> {
    if account_id.is_empty() || account_id.len() > MAX_ACCOUNT_ID_BYTES {
        return Err(KvError::InvalidIdentifier(format!(
            "account {account_id:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_lowercase_hex_and_round_trip() {
        let id = NamespaceId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert!(text
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(text.parse::<NamespaceId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<NamespaceId>().unwrap(), id);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in ["", "abc", &"g".repeat(32), &"a".repeat(33), &"a".repeat(31)] {
            assert!(
                matches!(
                    bad.parse::<NamespaceId>(),
                    Err(KvError::InvalidIdentifier(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn titles_are_checked() {
        assert!(validate_title("my-ns").is_ok());
        assert!(validate_title("").is_err());
        assert!(validate_title("   ").is_err());
        assert!(validate_title(&"t".repeat(513)).is_err());
    }
}
