//! Who may call the API, and what they may do.
//!
//! With tokens, each is a *grant*: a SHA-256 digest of the token (the token itself is never
//! kept, and never logged), the accounts it covers (or all), and whether it may only read or
//! also edit, as Cloudflare's API tokens are scoped. Presented tokens are compared digest
//! against digest in constant time, against every grant, so neither a token's content nor
//! which grant matched leaks through timing. The grants can be replaced while serving (a token
//! file reloaded), for every clone of an [`Auth`] at once.
//!
//! Without tokens (a node on a loopback address) the API is open, but only to what can only
//! come from this host: a request must name a loopback host in `Host` (anything else is what
//! DNS rebinding sends: a browser made to talk to 127.0.0.1 under an attacker's name), and an
//! `Origin`, when a browser sends one, must be loopback too (a cross-site page posting to the
//! API).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use driftkv_core::KvError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::envelope::ApiError;

/// What a request does, for deciding whether a token allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads: values, listings, metadata, namespaces, bulk gets, `/cluster`.
    Read,
    /// Writes: values, deletes, bulk writes, namespace changes.
    Edit,
}

/// Which accounts a grant covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accounts {
    /// Every account.
    All,
    /// These accounts only.
    Only(BTreeSet<String>),
}

impl Accounts {
    fn covers(&self, account: &str) -> bool {
        match self {
            Accounts::All => true,
            Accounts::Only(accounts) => accounts.contains(account),
        }
    }
}

/// One token's rights.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    digest: [u8; 32],
    /// The accounts it covers.
    pub accounts: Accounts,
    /// What it may do there.
    pub access: Access,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("accounts", &self.accounts)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 digest of a token, in hex: what a token file holds instead of the token.
pub fn token_digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Grant {
    /// A grant for `token` itself: every account, edit (what `api_tokens` and
    /// `DRIFTKV_API_TOKENS` give).
    pub fn full(token: &str) -> Grant {
        Grant {
            digest: Sha256::digest(token.as_bytes()).into(),
            accounts: Accounts::All,
            access: Access::Edit,
        }
    }

    /// A grant from the hex SHA-256 digest of a token.
    pub fn from_digest(hex_digest: &str, accounts: Accounts, access: Access) -> Option<Grant> {
        let text = hex_digest.trim();
        if text.len() != 64 {
            return None;
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Grant {
            digest,
            accounts,
            access,
        })
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Not TOML of the expected shape.
    #[error("not a token file: {0}")]
    Shape(String),
    /// An entry is wrong.
    #[error("token {index}: {reason}")]
    Entry { index: usize, reason: String },
    /// No token at all.
    #[error("lists no token")]
    Empty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    sha256: String,
    accounts: Vec<String>,
    permission: String,
}

/// The grants of a token file's text. Either TOML, one `[[tokens]]` table per token with its
/// `sha256` (hex digest), `accounts` (`["*"]` for all) and `permission` (`read` or `edit`), as
/// `driftkv token create` prints them; or plain text, one token per line (every account,
/// edit), `#` starting a comment.
pub fn parse_token_file(text: &str) -> Result<Vec<Grant>, TokenFileError> {
    let grants = if text.lines().any(|l| l.trim() == "[[tokens]]") {
        let file: TokenFile =
            toml::from_str(text).map_err(|e| TokenFileError::Shape(e.to_string()))?;
        file.tokens
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                entry.grant().map_err(|reason| TokenFileError::Entry {
                    index: i + 1,
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(Grant::full)
            .collect()
    };
    if grants.is_empty() {
        return Err(TokenFileError::Empty);
    }
    Ok(grants)
}

impl TokenEntry {
    fn grant(self) -> Result<Grant, String> {
        let access = match self.permission.as_str() {
            "read" => Access::Read,
            "edit" => Access::Edit,
            other => return Err(format!("permission {other:?} is not \"read\" or \"edit\"")),
        };
        let accounts = if self.accounts.iter().any(|a| a == "*") {
            Accounts::All
        } else if self.accounts.is_empty() {
            return Err("accounts is empty: list them, or [\"*\"] for all".into());
        } else {
            Accounts::Only(self.accounts.into_iter().collect())
        };
        Grant::from_digest(&self.sha256, accounts, access)
            .ok_or_else(|| "sha256 is not a hex SHA-256 digest (64 hex digits)".to_owned())
    }
}

/// Who may call the API.
#[derive(Clone)]
pub struct Auth {
    /// `None`: no tokens (loopback only); else the grants, replaceable while serving.
    grants: Option<Arc<RwLock<Arc<Vec<Grant>>>>>,
    /// Without tokens: a `Host` besides the loopback ones that requests may name.
    also_host: Option<&'static str>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.current().map_or(0, |g| g.len());
        f.debug_struct("Auth").field("tokens", &count).finish()
    }
}

/// The scope of one request: the account its path names (if any) and what it does.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The account, when the request names one.
    pub account: Option<&'a str>,
    /// Read or edit.
    pub access: Access,
}

impl Auth {
    /// No token required: for a server bound to loopback only, open to loopback clients.
    pub fn open() -> Self {
        Auth {
            grants: None,
            also_host: None,
        }
    }

    /// The same, also taking requests that name `host` when it has no tokens: a name no
    /// browser can be made to send under DNS rebinding, such as the `fake-host` workerd sends
    /// on every binding request.
    pub fn also_answering(&self, host: &'static str) -> Auth {
        Auth {
            also_host: Some(host),
            ..self.clone()
        }
    }

    /// Requires one of `tokens` on every request, each with every right. Empty tokens are
    /// ignored.
    pub fn tokens<I, S>(tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Auth::grants(
            tokens
                .into_iter()
                .filter(|t| !t.as_ref().is_empty())
                .map(|t| Grant::full(t.as_ref()))
                .collect(),
        )
    }

    /// Requires a token one of `grants` covers.
    pub fn grants(grants: Vec<Grant>) -> Self {
        Auth {
            grants: Some(Arc::new(RwLock::new(Arc::new(grants)))),
            also_host: None,
        }
    }

    /// Replaces the grants, for every clone of this `Auth`, from the next request on. Does
    /// nothing to an open `Auth`.
    pub fn replace(&self, grants: Vec<Grant>) {
        if let Some(current) = &self.grants {
            *current.write().expect("grants lock") = Arc::new(grants);
        }
    }

    fn current(&self) -> Option<Arc<Vec<Grant>>> {
        self.grants
            .as_ref()
            .map(|g| g.read().expect("grants lock").clone())
    }

    /// True when requests must carry a token.
    pub fn required(&self) -> bool {
        self.grants.is_some()
    }

    /// Checks a request's credentials against what it does: `Authorization: Bearer <token>`,
    /// or the legacy `X-Auth-Email` + `X-Auth-Key` pair, whose key is checked as a token.
    /// Without tokens, checks that the request can only have come from this host: its `Host`
    /// header and `authority` (the request URI's, HTTP/2's `:authority`) must be loopback.
    pub fn check(
        &self,
        headers: &HeaderMap,
        authority: Option<&str>,
        scope: Scope<'_>,
    ) -> Result<(), KvError> {
        let Some(grants) = self.current() else {
            return loopback_only(headers, authority, self.also_host);
        };
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
        let mut found: Option<&Grant> = None;
        for grant in grants.iter() {
            let matched = bool::from(grant.digest.ct_eq(&digest));
            if matched && found.is_none() {
                found = Some(grant);
            }
        }
        let Some(grant) = found else {
            return Err(KvError::Forbidden("invalid API token".into()));
        };
        if let Some(account) = scope.account {
            if !grant.accounts.covers(account) {
                return Err(KvError::Forbidden(format!(
                    "this API token may not use account {account:?}"
                )));
            }
        }
        if scope.access == Access::Edit && grant.access == Access::Read {
            return Err(KvError::Forbidden("this API token may only read".into()));
        }
        Ok(())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `host` (a `Host` header, a request's authority or the authority of an `Origin`,
/// with or without a port) names this host: `localhost` (or a name under it), or a loopback
/// address. A port must be a number a port can be; anything else after the name refuses.
pub fn is_loopback_host(host: &str) -> bool {
    // Checked on every request of a tokenless server, so it allocates nothing.
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1] or [::1]:port
        match rest.split_once(']') {
            Some((name, "")) => name,
            Some((name, port)) if port.strip_prefix(':').is_some_and(is_port) => name,
            _ => return false,
        }
    } else {
        // name, name:port, or a bare IPv6 address (several colons)
        match host.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') => {
                if !is_port(port) {
                    return false;
                }
                name
            }
            _ => host,
        }
    };
    let name = name.trim_end_matches('.');
    // `localhost`, or a name under it (`*.localhost`, RFC 6761).
    let bytes = name.as_bytes();
    const LOCALHOST: &[u8] = b"localhost";
    if bytes.len() >= LOCALHOST.len() {
        let (before, last) = bytes.split_at(bytes.len() - LOCALHOST.len());
        if last.eq_ignore_ascii_case(LOCALHOST) && (before.is_empty() || before.ends_with(b".")) {
            return true;
        }
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `port` is a port number: 1 to 5 digits, at most 65535.
fn is_port(port: &str) -> bool {
    (1..=5).contains(&port.len())
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok()
}

/// The open API's guard: only requests that name a loopback host, and that no foreign web
/// page sent, get through. The host a request names is its `Host` header (HTTP/1.1) and its
/// URI's authority (HTTP/2's `:authority`, or an absolute-form HTTP/1.1 target); each given
/// must be loopback, and a request with two `Host` headers is refused.
fn loopback_only(
    headers: &HeaderMap,
    authority: Option<&str>,
    also: Option<&str>,
) -> Result<(), KvError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(KvError::Forbidden(
            "a request with more than one Host header is refused".into(),
        ));
    }
    let host = host.map(|h| h.to_str().unwrap_or_default());
    let allowed = |name: &str| is_loopback_host(name) || also == Some(name);
    let named: [Option<&str>; 2] = [host, authority];
    let refused = match named {
        [None, None] => Some(""),
        _ => named.into_iter().flatten().find(|name| !allowed(name)),
    };
    if let Some(host) = refused {
        return Err(KvError::Forbidden(format!(
            "this server has no API tokens, so it answers only requests addressed to a loopback host, not {host:?}; configure api_tokens to serve other names"
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let authority = origin
            .split_once("://")
            .map_or("", |(_, rest)| rest.split('/').next().unwrap_or_default());
        if !is_loopback_host(authority) {
            return Err(KvError::Forbidden(format!(
                "cross-site request from {origin:?} refused: this server has no API tokens and answers only pages of this host"
            )));
        }
    }
    Ok(())
}

/// The scope of a REST API request: the account its path names, and whether it reads (`GET`,
/// `HEAD`, a bulk get) or edits.
pub(crate) fn rest_scope(request: &Request) -> (Option<String>, Access) {
    let path = request.uri().path();
    let account = path
        .strip_prefix("/client/v4/accounts/")
        .and_then(|rest| rest.split('/').next())
        .map(|raw| {
            percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .into_owned()
        });
    let reads = matches!(*request.method(), Method::GET | Method::HEAD)
        || (request.method() == Method::POST && path.ends_with("/bulk/get"));
    let access = if reads { Access::Read } else { Access::Edit };
    (account, access)
}

/// Middleware refusing requests whose credentials do not allow what they do.
pub async fn require(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let (account, access) = rest_scope(&request);
    let scope = Scope {
        account: account.as_deref(),
        access,
    };
    let authority = request.uri().authority().map(|a| a.as_str());
    match auth.check(request.headers(), authority, scope) {
        Ok(()) => next.run(request).await,
        Err(e) => ApiError(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for host in [
            "localhost",
            "LOCALHOST:8787",
            "localhost.",
            "app.localhost:1",
            "127.0.0.1",
            "127.0.0.1:8787",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8787",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "attacker.example",
            "localhost.attacker.example",
            "notlocalhost",
            "evil-localhost:80",
            "10.0.0.1:8787",
            "[::2]:8787",
            "127.0.0.1.nip.io",
            "[::1",
            "localhost:evil",
            "localhost:",
            "localhost:99999",
            "localhost:+80",
            "127.0.0.1:80:80",
            "[::1]junk",
            "[::1]:",
            "[::1]:8787x",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn read(account: &str) -> Scope<'_> {
        Scope {
            account: Some(account),
            access: Access::Read,
        }
    }

    fn edit(account: &str) -> Scope<'_> {
        Scope {
            account: Some(account),
            access: Access::Edit,
        }
    }

    #[test]
    fn an_open_api_answers_only_this_host() {
        let open = Auth::open();
        for host in [
            "localhost",
            "localhost:8787",
            "127.0.0.1:8787",
            "[::1]:8787",
            "app.localhost",
        ] {
            open.check(&headers(&[("host", host)]), None, read("a"))
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        for host in [
            "attacker.example",
            "attacker.example:8787",
            "10.0.0.1:8787",
            "",
        ] {
            assert!(
                matches!(
                    open.check(&headers(&[("host", host)]), None, read("a")),
                    Err(KvError::Forbidden(_))
                ),
                "{host}"
            );
        }
        let local = headers(&[
            ("host", "127.0.0.1:8787"),
            ("origin", "http://localhost:3000"),
        ]);
        open.check(&local, None, edit("a")).unwrap();
        let foreign = headers(&[
            ("host", "127.0.0.1:8787"),
            ("origin", "https://evil.example"),
        ]);
        assert!(open.check(&foreign, None, edit("a")).is_err());
        let opaque = headers(&[("host", "127.0.0.1:8787"), ("origin", "null")]);
        assert!(open.check(&opaque, None, edit("a")).is_err());
        let binding = open.also_answering("fake-host");
        binding
            .check(&headers(&[("host", "fake-host")]), None, read("a"))
            .unwrap();
        assert!(open
            .check(&headers(&[("host", "fake-host")]), None, read("a"))
            .is_err());
        // HTTP/2 names its host in :authority, which must be loopback too.
        open.check(&HeaderMap::new(), Some("localhost:8787"), read("a"))
            .unwrap();
        assert!(open
            .check(&HeaderMap::new(), Some("attacker.example"), read("a"))
            .is_err());
        assert!(open
            .check(
                &headers(&[("host", "localhost")]),
                Some("attacker.example"),
                read("a")
            )
            .is_err());
        assert!(open.check(&HeaderMap::new(), None, read("a")).is_err());
        // Two Host headers: refused, whatever the first says.
        let mut twice = headers(&[("host", "localhost")]);
        twice.append("host", HeaderValue::from_static("attacker.example"));
        assert!(open.check(&twice, None, read("a")).is_err());
        let mut both_local = headers(&[("host", "localhost")]);
        both_local.append("host", HeaderValue::from_static("localhost"));
        assert!(open.check(&both_local, None, read("a")).is_err());
        // Tokens that are all empty leave nothing open: every request is refused.
        let empty = Auth::tokens([""]);
        assert!(empty.required());
        let with = headers(&[("authorization", "Bearer "), ("host", "localhost")]);
        assert!(empty.check(&with, None, read("a")).is_err());
    }

    #[test]
    fn tokens_are_checked() {
        let auth = Auth::tokens(["alpha", "beta"]);
        assert!(auth
            .check(
                &headers(&[("authorization", "Bearer beta")]),
                None,
                edit("x")
            )
            .is_ok());
        assert!(auth
            .check(
                &headers(&[("authorization", "bearer alpha")]),
                None,
                read("x")
            )
            .is_ok());
        assert!(matches!(
            auth.check(&HeaderMap::new(), None, read("x")),
            Err(KvError::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.check(
                &headers(&[("authorization", "Bearer gamma")]),
                None,
                read("x")
            ),
            Err(KvError::Forbidden(_))
        ));
        assert!(matches!(
            auth.check(
                &headers(&[("authorization", "Basic alpha")]),
                None,
                read("x")
            ),
            Err(KvError::Unauthenticated(_))
        ));
        let legacy = headers(&[("x-auth-email", "me@example.com"), ("x-auth-key", "alpha")]);
        assert!(auth.check(&legacy, None, edit("x")).is_ok());
        assert!(matches!(
            auth.check(&headers(&[("x-auth-key", "alpha")]), None, read("x")),
            Err(KvError::Unauthenticated(_))
        ));
    }

    #[test]
    fn grants_are_scoped_to_accounts_and_permissions() {
        let reader = Grant::from_digest(
            &token_digest("reader"),
            Accounts::Only(["acme".to_owned()].into()),
            Access::Read,
        )
        .unwrap();
        let auth = Auth::grants(vec![reader, Grant::full("admin")]);
        let with = |token: &str| headers(&[("authorization", &format!("Bearer {token}"))]);
        auth.check(&with("reader"), None, read("acme")).unwrap();
        let refused = auth.check(&with("reader"), None, edit("acme")).unwrap_err();
        assert!(refused.to_string().contains("may only read"), "{refused}");
        let refused = auth
            .check(&with("reader"), None, read("other"))
            .unwrap_err();
        assert!(
            refused.to_string().contains("account \"other\""),
            "{refused}"
        );
        // No account named (an operator route): any valid token reads.
        auth.check(
            &with("reader"),
            None,
            Scope {
                account: None,
                access: Access::Read,
            },
        )
        .unwrap();
        auth.check(&with("admin"), None, edit("other")).unwrap();
        // Replaced for every clone at once.
        let clone = auth.clone();
        auth.replace(vec![Grant::full("admin")]);
        assert!(clone.check(&with("reader"), None, read("acme")).is_err());
    }

    #[test]
    fn token_files_are_read_in_both_forms() {
        let toml = format!(
            "# tokens\n[[tokens]]\nsha256 = \"{}\"\naccounts = [\"acme\", \"beta\"]\npermission = \"read\"\n\n[[tokens]]\nsha256 = \"{}\"\naccounts = [\"*\"]\npermission = \"edit\"\n",
            token_digest("r"),
            token_digest("e")
        );
        let grants = parse_token_file(&toml).unwrap();
        assert_eq!(grants.len(), 2);
        assert_eq!(grants[0].access, Access::Read);
        assert_eq!(grants[1].accounts, Accounts::All);
        let plain = parse_token_file("# one per line\nfirst\n\n second \n").unwrap();
        assert_eq!(plain, vec![Grant::full("first"), Grant::full("second")]);
        assert!(matches!(
            parse_token_file("# nothing\n"),
            Err(TokenFileError::Empty)
        ));
        let bad = "[[tokens]]\nsha256 = \"xyz\"\naccounts = [\"*\"]\npermission = \"edit\"\n";
        assert!(matches!(
            parse_token_file(bad),
            Err(TokenFileError::Entry { index: 1, .. })
        ));
        let bad = format!(
            "[[tokens]]\nsha256 = \"{}\"\naccounts = []\npermission = \"edit\"\n",
            token_digest("x")
        );
        assert!(parse_token_file(&bad).is_err());
        let bad = format!(
            "[[tokens]]\nsha256 = \"{}\"\naccounts = [\"*\"]\npermission = \"admin\"\n",
            token_digest("x")
        );
        assert!(parse_token_file(&bad).is_err());
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        assert!(!format!("{:?}", Auth::tokens(["secret-token"])).contains("secret"));
        assert!(!format!("{:?}", Grant::full("secret-token")).contains("secret"));
    }

    #[test]
    fn rest_requests_read_or_edit_an_account() {
        let scope = |method: Method, path: &str| {
            rest_scope(
                &Request::builder()
                    .method(method)
                    .uri(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
        };
        let base = "/client/v4/accounts/a%20b/storage/kv/namespaces";
        assert_eq!(scope(Method::GET, base), (Some("a b".into()), Access::Read));
        assert_eq!(
            scope(Method::POST, base),
            (Some("a b".into()), Access::Edit)
        );
        assert_eq!(
            scope(Method::POST, &format!("{base}/n/bulk/get")),
            (Some("a b".into()), Access::Read)
        );
        assert_eq!(
            scope(Method::DELETE, &format!("{base}/n/values/k")).1,
            Access::Edit
        );
        assert_eq!(scope(Method::GET, "/cluster"), (None, Access::Read));
    }
}
