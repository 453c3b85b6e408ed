//! API token checks.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time, digest against
//! digest, so neither a token's content nor its length leaks through timing, and a token is
//! never logged.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use driftkv_core::KvError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::envelope::ApiError;

/// Who may call the API.
#[derive(Clone)]
pub struct Auth {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.digests.len())
            .finish()
    }
}

impl Auth {
    /// No token required: for a server bound to loopback only.
    pub fn open() -> Self {
        Auth {
            digests: Vec::new(),
        }
    }

    /// Requires one of `tokens` on every request. Empty tokens are ignored.
    pub fn tokens<I, S>(tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let digests = tokens
            .into_iter()
            .filter(|t| !t.as_ref().is_empty())
            .map(|t| Sha256::digest(t.as_ref().as_bytes()).into())
            .collect();
        Auth { digests }
    }

    /// True when requests must carry a token.
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Checks the credentials of a request: `Authorization: Bearer <token>`, or the legacy
    /// `X-Auth-Email` + `X-Auth-Key` pair, whose key is checked as a token.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), KvError> {
        if !self.required() {
            return Ok(());
        }
        let presented = bearer(headers).or_else(|| {
            headers
                .contains_key("x-auth-email")
                .then(|| headers.get("x-auth-key")?.to_str().ok())
                .flatten()
        });
        let Some(token) = presented else {
            return Err(KvError::Unauthenticated(
                "missing credentials: send 'Authorization: Bearer <token>'".into(),
            ));
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every digest without stopping early.
        let matched = self
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, d| acc | d.ct_eq(&digest));
        if bool::from(matched) {
            Ok(())
        } else {
            Err(KvError::Forbidden("invalid API token".into()))
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware refusing requests without valid credentials.
pub async fn require(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    match auth.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => ApiError(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn open_auth_lets_everything_through() {
        assert!(Auth::open().check(&HeaderMap::new()).is_ok());
        assert!(!Auth::tokens([""]).required());
    }

    #[test]
    fn tokens_are_checked() {
        let auth = Auth::tokens(["alpha", "beta"]);
        assert!(auth
            .check(&headers(&[("authorization", "Bearer beta")]))
            .is_ok());
        assert!(auth
            .check(&headers(&[("authorization", "bearer alpha")]))
            .is_ok());
        assert!(matches!(
            auth.check(&HeaderMap::new()),
            Err(KvError::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.check(&headers(&[("authorization", "Bearer gamma")])),
            Err(KvError::Forbidden(_))
        ));
        assert!(matches!(
            auth.check(&headers(&[("authorization", "Basic alpha")])),
            Err(KvError::Unauthenticated(_))
        ));
        let legacy = headers(&[("x-auth-email", "me@example.com"), ("x-auth-key", "alpha")]);
        assert!(auth.check(&legacy).is_ok());
        assert!(matches!(
            auth.check(&headers(&[("x-auth-key", "alpha")])),
            Err(KvError::Unauthenticated(_))
        ));
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        assert!(!format!("{:?}", Auth::tokens(["secret-token"])).contains("secret"));
    }
}
