//! A typed client for the Workers KV REST API v4 as driftkv serves it (and Cloudflare does):
//! namespaces, values, listings with cursors followed for you, bulk operations split into
//! API-sized batches and retried with backoff, and a driftkv node's `/cluster` view.
//!
//! ```no_run
//! # async fn demo() -> driftkv_client::Result<()> {
//! use driftkv_client::{Client, PutOptions};
//! let client = Client::new("http://127.0.0.1:8787", "my-account", None)?;
//! let ns = client.create_namespace("demo").await?;
//! client.put(&ns.id, "greeting", b"hello".to_vec(), &PutOptions::default()).await?;
//! assert_eq!(client.get(&ns.id, "greeting").await?.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```

mod bulk;
mod error;
pub mod export;
mod retry;
mod types;

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

pub use bulk::{batches, BulkReport, Progress, MAX_BULK_BODY_BYTES, MAX_BULK_ITEMS};
pub use driftkv_core::cluster::{ClusterView, Member, MemberStatus, NodeRole};
pub use error::{Error, Result};
pub use retry::RetryPolicy;
use retry::{Repeat, Retries};
pub use types::{BulkItem, BulkResult, Key, KeyPage, Namespace, PutOptions, ValueWithMetadata};

/// The account the CLI uses, and the console opens on, when none is given: any account id
/// works with a dev server.
pub const DEFAULT_ACCOUNT: &str = "dev";

/// Most keys one bulk read may ask for.
pub const MAX_BULK_GET_KEYS: usize = 100;

/// How long one request may take before it fails; a 100 MB bulk write fits comfortably.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// A client for one account at one endpoint.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    root: String,
    /// `{root}/client/v4/accounts/{account}/storage/kv/namespaces`.
    namespaces: String,
    retry: RetryPolicy,
}

/// How a [`Client`] connects, besides its endpoint and account.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Bearer token sent with every request.
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for `https://` endpoints besides the system's roots:
    /// the cluster CA of a driftkv cluster whose certificates `driftkv certs` made.
    pub ca_pem: Option<Vec<u8>>,
}

impl Client {
    /// A client for `account_id` at `url` (a driftkv edge, or `https://api.cloudflare.com`),
    /// sending `token` as a bearer token when given.
    pub fn new(url: &str, account_id: &str, token: Option<&str>) -> Result<Self> {
        Client::with_options(
            url,
            account_id,
            ClientOptions {
                token: token.map(str::to_owned),
                ca_pem: None,
            },
        )
    }

    /// A client for `account_id` at `url` as `options` say.
    pub fn with_options(url: &str, account_id: &str, options: ClientOptions) -> Result<Self> {
        let token = options.token.as_deref();
        let root = url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&root)
            .map_err(|e| Error::Invalid(format!("{url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Invalid(format!("{url:?} is not an http(s) URL")));
        }
        if account_id.is_empty() {
            return Err(Error::Invalid("the account id is empty".into()));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    Error::Invalid("the token has characters a header cannot hold".into())
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10));
        if let Some(pem) = &options.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem)
                .map_err(|e| Error::Invalid(format!("the CA certificate is not PEM: {e}")))?;
            builder = builder.add_root_certificate(ca);
        }
        let http = builder
            .build()
            .map_err(|e| Error::Invalid(format!("cannot build an HTTP client: {e}")))?;
        let namespaces = format!(
            "{root}/client/v4/accounts/{}/storage/kv/namespaces",
            encode(account_id)
        );
        Ok(Client {
            http,
            root,
            namespaces,
            retry: RetryPolicy::default(),
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The endpoint, as given.
    pub fn url(&self) -> &str {
        &self.root
    }

    fn namespace_url(&self, namespace_id: &str) -> String {
        format!("{}/{}", self.namespaces, encode(namespace_id))
    }

    fn key_url(&self, namespace_id: &str, what: &str, key: &str) -> String {
        format!(
            "{}/{what}/{}",
            self.namespace_url(namespace_id),
            encode(key)
        )
    }

    /// Sends the request `build` makes and returns the successful response, or the API error
    /// it carried, retrying by the client's [`RetryPolicy`] (each try sends a request built
    /// afresh: a streamed body cannot be sent twice).
    async fn send(
        &self,
        repeat: Repeat,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let mut retries = Retries::new(&self.retry);
        loop {
            match self.send_once(build()).await {
                Ok(response) => return Ok(response),
                Err(e) => retries.after(e, repeat).await?,
            }
        }
    }

    async fn send_once(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let request = request
            .build()
            .map_err(|e| Error::Invalid(format!("cannot build the request: {e}")))?;
        let url = request.url().to_string();
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| Error::transport(&url, e))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(api_error(response).await)
        }
    }

    /// Sends a request as [`Client::send`] does and returns the envelope's `result` and
    /// `result_info`.
    async fn call<T: DeserializeOwned>(
        &self,
        repeat: Repeat,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(T, Value)> {
        let response = self.send(repeat, build).await?;
        let url = response.url().to_string();
        let body: Value = response.json().await.map_err(|e| Error::Protocol {
            url: url.clone(),
            reason: format!("the body is not JSON: {e}"),
        })?;
        if body["success"] != true {
            return Err(Error::Protocol {
                url,
                reason: format!("no success envelope: {body}"),
            });
        }
        let result =
            serde_json::from_value(body["result"].clone()).map_err(|e| Error::Protocol {
                url,
                reason: format!("unexpected result: {e}"),
            })?;
        Ok((result, body["result_info"].clone()))
    }

    /// Creates a namespace.
    pub async fn create_namespace(&self, title: &str) -> Result<Namespace> {
        let body = json!({ "title": title });
        let request = || self.http.post(&self.namespaces).json(&body);
        Ok(self.call(Repeat::Once, request).await?.0)
    }

    /// Every namespace of the account, all pages read.
    pub async fn list_namespaces(&self) -> Result<Vec<Namespace>> {
        let mut all = Vec::new();
        for page in 1.. {
            let request = || {
                self.http
                    .get(&self.namespaces)
                    .query(&[("page", page), ("per_page", 100)])
            };
            let (namespaces, info): (Vec<Namespace>, Value) =
                self.call(Repeat::Safe, request).await?;
            let done = namespaces.is_empty()
                || info["total_pages"]
                    .as_u64()
                    .is_none_or(|pages| page >= pages);
            all.extend(namespaces);
            if done {
                break;
            }
        }
        Ok(all)
    }

    /// One namespace.
    pub async fn namespace(&self, namespace_id: &str) -> Result<Namespace> {
        let url = self.namespace_url(namespace_id);
        Ok(self.call(Repeat::Safe, || self.http.get(&url)).await?.0)
    }

    /// Renames a namespace.
    pub async fn rename_namespace(&self, namespace_id: &str, title: &str) -> Result<Namespace> {
        let (url, body) = (self.namespace_url(namespace_id), json!({ "title": title }));
        Ok(self
            .call(Repeat::Safe, || self.http.put(&url).json(&body))
            .await?
            .0)
    }

    /// Deletes a namespace and every key in it.
    pub async fn delete_namespace(&self, namespace_id: &str) -> Result<()> {
        let url = self.namespace_url(namespace_id);
        self.call::<Value>(Repeat::Safe, || self.http.delete(&url))
            .await?;
        Ok(())
    }

    /// Writes a value: a raw body, or multipart with the metadata when there is some.
    pub async fn put(
        &self,
        namespace_id: &str,
        key: &str,
        value: impl Into<Bytes>,
        options: &PutOptions,
    ) -> Result<()> {
        let url = self.key_url(namespace_id, "values", key);
        let value: Bytes = value.into();
        let request = || {
            let mut request = self.http.put(&url);
            if let Some(expiration) = options.expiration {
                request = request.query(&[("expiration", expiration)]);
            }
            if let Some(ttl) = options.expiration_ttl {
                request = request.query(&[("expiration_ttl", ttl)]);
            }
            match &options.metadata {
                None => request.body(value.clone()),
                Some(metadata) => {
                    let value = reqwest::multipart::Part::stream(value.clone())
                        .file_name("upload")
                        .mime_str("application/octet-stream")
                        .expect("a valid MIME type");
                    let metadata = reqwest::multipart::Part::text(metadata.to_string())
                        .mime_str("application/json")
                        .expect("a valid MIME type");
                    request.multipart(
                        reqwest::multipart::Form::new()
                            .part("value", value)
                            .part("metadata", metadata),
                    )
                }
            }
        };
        self.call::<Value>(Repeat::Safe, request).await?;
        Ok(())
    }

    /// Reads a value's bytes; `None` when the key does not exist or has expired.
    pub async fn get(&self, namespace_id: &str, key: &str) -> Result<Option<Bytes>> {
        self.get_cached(namespace_id, key, None).await
    }

    /// Reads a value's bytes as [`Client::get`], asking the edge to cache the result for
    /// `cache_ttl` seconds (Workers KV's `cacheTtl`; the edge's default when `None`).
    pub async fn get_cached(
        &self,
        namespace_id: &str,
        key: &str,
        cache_ttl: Option<u64>,
    ) -> Result<Option<Bytes>> {
        let url = self.key_url(namespace_id, "values", key);
        let request = || {
            let request = self.http.get(&url);
            match cache_ttl {
                Some(ttl) => request.query(&[("cache_ttl", ttl)]),
                None => request,
            }
        };
        match self.send(Repeat::Safe, request).await {
            Ok(response) => {
                let url = response.url().to_string();
                response
                    .bytes()
                    .await
                    .map(Some)
                    .map_err(|e| Error::transport(&url, e))
            }
            Err(e) if e.is_key_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A key's metadata (`Value::Null` when it has none); `None` when the key does not exist.
    pub async fn metadata(&self, namespace_id: &str, key: &str) -> Result<Option<Value>> {
        let url = self.key_url(namespace_id, "metadata", key);
        match self
            .call::<Value>(Repeat::Safe, || self.http.get(&url))
            .await
        {
            Ok((metadata, _)) => Ok(Some(metadata)),
            Err(e) if e.is_key_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a key; succeeds whether or not it existed.
    pub async fn delete(&self, namespace_id: &str, key: &str) -> Result<()> {
        let url = self.key_url(namespace_id, "values", key);
        self.call::<Value>(Repeat::Safe, || self.http.delete(&url))
            .await?;
        Ok(())
    }

    /// One page of keys from `cursor` (or the start).
    pub async fn list_keys(
        &self,
        namespace_id: &str,
        prefix: Option<&str>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<KeyPage> {
        let url = format!("{}/keys", self.namespace_url(namespace_id));
        let request = || {
            let mut request = self.http.get(&url);
            if let Some(prefix) = prefix {
                request = request.query(&[("prefix", prefix)]);
            }
            if let Some(cursor) = cursor {
                request = request.query(&[("cursor", cursor)]);
            }
            if let Some(limit) = limit {
                request = request.query(&[("limit", limit)]);
            }
            request
        };
        let (keys, info): (Vec<Key>, Value) = self.call(Repeat::Safe, request).await?;
        let cursor = info["cursor"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        Ok(KeyPage { keys, cursor })
    }

    /// Every key with `prefix`, following cursors to the end.
    pub async fn all_keys(&self, namespace_id: &str, prefix: Option<&str>) -> Result<Vec<Key>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list_keys(namespace_id, prefix, cursor.as_deref(), None)
                .await?;
            all.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// One bulk write request (at most [`MAX_BULK_ITEMS`] items, [`MAX_BULK_BODY_BYTES`]).
    pub async fn bulk_put(&self, namespace_id: &str, items: &[BulkItem]) -> Result<BulkResult> {
        let url = format!("{}/bulk", self.namespace_url(namespace_id));
        Ok(self
            .call(Repeat::Safe, || self.http.put(&url).json(items))
            .await?
            .0)
    }

    /// One bulk delete request (at most [`MAX_BULK_ITEMS`] keys).
    pub async fn bulk_delete(&self, namespace_id: &str, keys: &[String]) -> Result<BulkResult> {
        let url = format!("{}/bulk/delete", self.namespace_url(namespace_id));
        Ok(self
            .call(Repeat::Safe, || self.http.post(&url).json(keys))
            .await?
            .0)
    }

    /// One bulk read (at most [`MAX_BULK_GET_KEYS`] keys) of text values with their metadata;
    /// a missing key maps to `None`.
    pub async fn bulk_get(
        &self,
        namespace_id: &str,
        keys: &[String],
    ) -> Result<Vec<(String, Option<ValueWithMetadata>)>> {
        let url = format!("{}/bulk/get", self.namespace_url(namespace_id));
        let body = json!({ "keys": keys, "type": "text", "withMetadata": true });
        let (result, _): (Value, Value) = self
            .call(Repeat::Safe, || self.http.post(&url).json(&body))
            .await?;
        let mut values = result["values"].as_object().cloned().unwrap_or_default();
        keys.iter()
            .map(|key| {
                let value = match values.remove(key) {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(serde_json::from_value(v).map_err(|e| Error::Protocol {
                        url: self.namespaces.clone(),
                        reason: format!("unexpected bulk get value: {e}"),
                    })?),
                };
                Ok((key.clone(), value))
            })
            .collect()
    }

    /// The node's view of the cluster (`GET /cluster`, a driftkv extension).
    pub async fn cluster(&self) -> Result<ClusterView> {
        let url = format!("{}/cluster", self.root);
        let response = self.send(Repeat::Safe, || self.http.get(&url)).await?;
        response.json().await.map_err(|e| Error::Protocol {
            url,
            reason: format!("unexpected /cluster answer: {e}"),
        })
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }
}

/// Percent-encodes a path segment (an account id, a namespace id, a key) the way Cloudflare's
/// SDK does: everything but unreserved characters, `:` and `!`.
pub fn encode(segment: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b':')
        .remove(b'!');
    percent_encoding::utf8_percent_encode(segment, SET).to_string()
}

/// The API error an unsuccessful response carries.
async fn api_error(response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    // Only the delay-seconds form: driftkv sends it, and so does Cloudflare's API.
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let first = &body["errors"][0];
    match (first["code"].as_u64(), first["message"].as_str()) {
        (code, Some(message)) => Error::Api {
            status,
            code: code.unwrap_or(0),
            message: message.to_owned(),
            retry_after,
        },
        _ => Error::Api {
            status,
            code: 0,
            message: if text.trim().is_empty() {
                format!("HTTP {status}")
            } else {
                text.chars().take(200).collect()
            },
            retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_like_the_official_sdk() {
        assert_eq!(encode("a b/c?d%e:f!"), "a%20b%2Fc%3Fd%25e:f!");
        assert_eq!(encode("plain-key_1.txt~"), "plain-key_1.txt~");
    }

    #[test]
    fn bad_endpoints_are_refused_up_front() {
        assert!(Client::new("not a url", "acct", None).is_err());
        assert!(Client::new("ftp://host", "acct", None).is_err());
        assert!(Client::new("http://127.0.0.1:8787", "", None).is_err());
        let client = Client::new("http://127.0.0.1:8787/", "my acct", Some("t")).unwrap();
        assert_eq!(
            client.key_url("0123", "values", "a/b"),
            "http://127.0.0.1:8787/client/v4/accounts/my%20acct/storage/kv/namespaces/0123/values/a%2Fb"
        );
    }
}
