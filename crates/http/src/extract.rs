//! Extractors for path segments and query parameters that report failures in the Cloudflare
//! envelope instead of axum's plain-text rejections.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query, RawPathParams};
use axum::http::request::Parts;
use axum::http::Uri;
use driftkv_core::key::{parse_expiration_param, validate_key};
use driftkv_core::namespace::validate_account_id;
use driftkv_core::{KvError, NamespaceId};

use crate::envelope::ApiError;

/// Path parameters, percent-decoded exactly once by axum.
async fn path_params<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<RawPathParams, KvError> {
    RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| {
            KvError::InvalidKey(format!(
                "the path does not decode to UTF-8: {}",
                e.body_text()
            ))
        })
}

/// One parameter (routes have at most three, so a scan beats building a map).
fn param<'a>(params: &'a RawPathParams, name: &str) -> &'a str {
    params
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, value)| value)
}

fn valid_account(account: &str) -> Result<String, KvError> {
    validate_account_id(account)?;
    Ok(account.to_owned())
}

/// `/accounts/{account_id}/...`
pub struct AccountPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AccountPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = path_params(parts, state).await?;
        Ok(AccountPath(valid_account(param(&params, "account_id"))?))
    }
}

/// `/accounts/{account_id}/storage/kv/namespaces/{namespace_id}/...`
pub struct NamespacePath {
    pub account: String,
    pub id: NamespaceId,
}

impl<S: Send + Sync> FromRequestParts<S> for NamespacePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = path_params(parts, state).await?;
        Ok(NamespacePath::new(
            param(&params, "account_id"),
            param(&params, "namespace_id"),
        )?)
    }
}

impl NamespacePath {
    /// The path's parameters, percent-decoded, validated account first.
    pub fn new(account: &str, namespace_id: &str) -> Result<Self, KvError> {
        Ok(NamespacePath {
            account: valid_account(account)?,
            id: namespace_id.parse()?,
        })
    }
}

/// `.../namespaces/{namespace_id}/values/{*key}` (and `metadata/`). The key is everything after
/// the route prefix, so a `%2F` inside it is part of the key, never a path separator.
pub struct KeyPath {
    pub account: String,
    pub id: NamespaceId,
    pub key: String,
}

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = path_params(parts, state).await?;
        KeyPath::new(
            param(&params, "account_id"),
            param(&params, "namespace_id"),
            param(&params, "key"),
        )
    }
}

impl KeyPath {
    /// The path's parameters, percent-decoded, validated in the order the API reports them:
    /// key, account, namespace.
    pub fn new(account: &str, namespace_id: &str, key: &str) -> Result<Self, ApiError> {
        validate_key(key)?;
        let NamespacePath { account, id } = NamespacePath::new(account, namespace_id)?;
        Ok(KeyPath {
            account,
            id,
            key: key.to_owned(),
        })
    }
}

/// Query parameters.
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Params::from_uri(&parts.uri)
    }
}

impl Params {
    /// The query parameters of `uri`.
    pub fn from_uri(uri: &Uri) -> Result<Self, ApiError> {
        let Query(map) = Query::<HashMap<String, String>>::try_from_uri(uri).map_err(|e| {
            KvError::InvalidParameter(format!("malformed query string: {}", e.body_text()))
        })?;
        Ok(Params(map))
    }

    /// A text parameter.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An expiration parameter (`expiration`, `expiration_ttl`) in seconds.
    pub fn expiration(&self, name: &str) -> Result<Option<u64>, KvError> {
        self.text(name)
            .map(|t| parse_expiration_param(name, t))
            .transpose()
    }

    /// A whole number, if present. Typed clients (the Python SDK declares `limit: float`) may
    /// send "100.0", which counts as whole.
    pub fn whole_number(&self, name: &str) -> Result<Option<usize>, KvError> {
        let Some(text) = self.text(name) else {
            return Ok(None);
        };
        let whole = text.trim().parse::<usize>().ok().or_else(|| {
            let f = text.trim().parse::<f64>().ok()?;
            (f.fract() == 0.0 && f >= 0.0 && f <= usize::MAX as f64).then_some(f as usize)
        });
        whole.map(Some).ok_or_else(|| {
            KvError::InvalidParameter(format!("{name} must be a whole number, got {text:?}"))
        })
    }

    /// A whole number within `min..=max`, or `default` when absent.
    pub fn number_in(
        &self,
        name: &str,
        min: usize,
        max: usize,
        default: usize,
    ) -> Result<usize, KvError> {
        let out_of_range = || {
            KvError::InvalidParameter(format!(
                "{name} must be a whole number from {min} to {max}, got {:?}",
                self.text(name).unwrap_or_default()
            ))
        };
        match self.whole_number(name).map_err(|_| out_of_range())? {
            None => Ok(default),
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(_) => Err(out_of_range()),
        }
    }
}
