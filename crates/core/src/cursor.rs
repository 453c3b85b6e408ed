//! Opaque list cursors.
//!
//! A cursor records where a listing stopped: the namespace and prefix it belongs to, and the
//! last key examined (not necessarily returned, since a page can stop early on tombstones or
//! expired keys). It is sent to clients as URL-safe base64 and checked on the way back in, so a
//! cursor replayed against another namespace or prefix is refused instead of silently
//! answering a different listing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::namespace::NamespaceId;

/// Where a key listing resumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCursor {
    pub namespace: NamespaceId,
    pub prefix: String,
    /// The listing resumes strictly after this key.
    pub after: String,
}

const CURSOR_FORMAT: u8 = 1;

impl ListCursor {
    /// The opaque text form handed to clients.
    pub fn encode(&self) -> String {
        let mut bytes = vec![CURSOR_FORMAT];
        postcard::to_io(self, &mut bytes).expect("postcard encoding into a Vec");
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a cursor a client sent back, and checks it belongs to this namespace and prefix.
    pub fn decode(text: &str, namespace: NamespaceId, prefix: &str) -> Result<Self, KvError> {
        let malformed = || KvError::InvalidCursor("the cursor is malformed".into());
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| malformed())?;
        let (&format, rest) = bytes.split_first().ok_or_else(malformed)?;
        if format != CURSOR_FORMAT {
            return Err(malformed());
        }
        let cursor: ListCursor = postcard::from_bytes(rest).map_err(|_| malformed())?;
        if cursor.namespace != namespace {
            return Err(KvError::InvalidCursor(
                "the cursor belongs to another namespace".into(),
            ));
        }
        if cursor.prefix != prefix {
            return Err(KvError::InvalidCursor(format!(
                "the cursor was issued for prefix {:?}, not {prefix:?}",
                cursor.prefix
            )));
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ns() -> NamespaceId {
        NamespaceId([7; 16])
    }

    #[test]
    fn cursors_round_trip() {
        let c = ListCursor {
            namespace: ns(),
            prefix: "user:".into(),
            after: "user:42 /?%".into(),
        };
        let text = c.encode();
        assert!(text
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'));
        assert_eq!(ListCursor::decode(&text, ns(), "user:").unwrap(), c);
    }

    #[test]
    fn mismatched_or_malformed_cursors_are_refused() {
        let c = ListCursor {
            namespace: ns(),
            prefix: "a".into(),
            after: "ab".into(),
        };
        let text = c.encode();
        assert!(matches!(
            ListCursor::decode(&text, ns(), "b"),
            Err(KvError::InvalidCursor(_))
        ));
        assert!(matches!(
            ListCursor::decode(&text, NamespaceId([8; 16]), "a"),
            Err(KvError::InvalidCursor(_))
        ));
        for bad in ["", "!!!", "AAAA", "not a cursor", &text[..text.len() - 2]] {
            assert!(
                matches!(
                    ListCursor::decode(bad, ns(), "a"),
                    Err(KvError::InvalidCursor(_))
                ),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_cursor_round_trips(prefix in ".{0,40}", after in ".{0,80}", id in any::<[u8; 16]>()) {
            let c = ListCursor { namespace: NamespaceId(id), prefix: prefix.clone(), after };
            prop_assert_eq!(ListCursor::decode(&c.encode(), NamespaceId(id), &prefix).unwrap(), c);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = ListCursor::decode(&text, ns(), "");
        }
    }
}
