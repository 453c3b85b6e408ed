//! driftkv's web console, served at `/ui` by every edge (and by central, for the cluster view).
//!
//! The console is a static page and a few hand-written ES modules, compiled into the binary
//! so that it works with no internet access. It holds no data and renders nothing on the
//! server: the page's JavaScript calls the node's own REST API (`/client/v4/...`, `/cluster`,
//! `/readyz`, the testbed's `/admin/testbed/...`) with the bearer token the user gives it, so
//! every limit, error and token check of the API applies to the console unchanged. The pages
//! themselves need no token and carry no secret.
//!
//! Every response carries a strict Content-Security-Policy ([`CONTENT_SECURITY_POLICY`]): only
//! this origin's scripts, styles and API, no inline script or style, no framing, no form posts.
//! Assets are revalidated with an `ETag` on every load (`Cache-Control: no-cache`), so a new
//! binary never leaves a browser running an old console.

use std::sync::LazyLock;

use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use driftkv_core::cluster::NodeRole;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The policy every console response carries. Scripts, styles and API calls come from this
/// origin only; images also from `blob:` URLs, which is how the page shows the testbed's SVG
/// plots it fetched with the admin token. Nothing inline, no plugins, no frames, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// What the page is told about the node serving it (`GET /ui/config.json`). Nothing in it is
/// secret: the same facts are in `/readyz` and gossip.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// The node's role: an edge serves every page; central, which has no KV API, only the
    /// cluster view.
    pub role: NodeRole,
    /// The node's id, as `/cluster` lists it.
    pub node_id: String,
    /// The account the console opens on until the user picks another (the CLI's default).
    pub default_account: String,
}

/// One compiled-in file under `/ui/assets/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Every asset the console has; anything else under `/ui/assets/` is a 404.
const ASSETS: [Asset; 11] = [
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../assets/icon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("../assets/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("../assets/dom.js"),
    },
    Asset {
        name: "namespaces.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("../assets/namespaces.js"),
    },
    Asset {
        name: "keys.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("../assets/keys.js"),
    },
    Asset {
        name: "value.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("../assets/value.js"),
    },
    Asset {
        name: "cluster.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("../assets/cluster.js"),
    },
    Asset {
        name: "testbed.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("../assets/testbed.js"),
    },
    Asset {
        name: "chart.js",
        content_type: JAVASCRIPT,
        body: include_bytes!("../assets/chart.js"),
    },
];

/// The page shell every console URL answers with; the modules render the page it names.
const SHELL: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../assets/index.html"),
};

/// Each asset's entity tag: a digest of its bytes, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .chain([&SHELL])
        .map(|asset| {
            let digest = Sha256::digest(asset.body);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
        })
        .collect()
});

/// The console's routes, to be mounted among a node's routes that need no token:
///
/// - `GET /ui`, `/ui/cluster`, `/ui/testbed`, `/ui/namespaces/{id}`: the page;
/// - `GET /ui/assets/{file}`: its styles, scripts and icon;
/// - `GET /ui/config.json`: [`Options`];
/// - anything else under `/ui/`: 404.
pub fn router(options: Options) -> Router {
    let config = Json(options);
    Router::new()
        .route("/ui", get(shell))
        .route("/ui/", get(shell))
        .route("/ui/cluster", get(shell))
        .route("/ui/testbed", get(shell))
        .route("/ui/namespaces/{id}", get(shell))
        .route("/ui/assets/{file}", get(asset))
        .route(
            "/ui/config.json",
            get(move || {
                let config = config.clone();
                async move { ([(header::CACHE_CONTROL, "no-store")], config) }
            }),
        )
        .route("/ui/{*rest}", get(not_found))
        .layer(middleware::from_fn(secured))
}

async fn shell(headers: HeaderMap) -> Response {
    serve(&SHELL, ETAGS.len() - 1, &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == file) {
        Some(index) => serve(&ASSETS[index], index, &headers),
        None => not_found().await,
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found: the console has no such page or file\n",
    )
        .into_response()
}

/// An asset, or `304 Not Modified` when the browser already holds this version of it.
fn serve(asset: &Asset, index: usize, request: &HeaderMap) -> Response {
    let etag = &ETAGS[index];
    let cached = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim().trim_start_matches("W/") == etag)
        });
    let headers = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (
        headers,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

/// Adds the security headers to every console response.
async fn secured(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    fn console() -> Router {
        router(Options {
            role: NodeRole::Edge,
            node_id: "2".into(),
            default_account: "dev".into(),
        })
    }

    async fn get(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = axum::http::Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        console()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header_of<'a>(response: &'a Response, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    async fn body(response: Response) -> Vec<u8> {
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn every_page_is_the_shell_with_a_strict_policy() {
        for path in [
            "/ui",
            "/ui/",
            "/ui/cluster",
            "/ui/testbed",
            "/ui/namespaces/0123",
        ] {
            let response = get(path, &[]).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(
                header_of(&response, "content-type"),
                "text/html; charset=utf-8"
            );
            let csp = header_of(&response, "content-security-policy");
            assert!(csp.starts_with("default-src 'none';"), "{csp}");
            assert!(!csp.contains("unsafe"), "{csp}");
            assert_eq!(header_of(&response, "x-content-type-options"), "nosniff");
            assert_eq!(header_of(&response, "x-frame-options"), "DENY");
            assert!(response.headers().get("set-cookie").is_none());
            let html = String::from_utf8(body(response).await).unwrap();
            assert!(html.contains(r#"<script type="module" src="/ui/assets/app.js">"#));
        }
    }

    #[test]
    fn the_shell_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(SHELL.body).unwrap();
        assert_eq!(
            html.matches("<script").count(),
            html.matches("<script type=\"module\" src=").count(),
            "every script is a file"
        );
        assert!(!html.contains("<style"), "no inline style element");
        assert!(!html.contains(" style="), "no style attribute");
        let handlers: Vec<&str> = html
            .split_whitespace()
            .filter(|word| {
                word.split_once('=').is_some_and(|(name, _)| {
                    name.starts_with("on") && name.bytes().all(|b| b.is_ascii_lowercase())
                })
            })
            .collect();
        assert!(handlers.is_empty(), "inline event handlers: {handlers:?}");
        assert!(!html.contains("javascript:"), "no script URL");
    }

    #[tokio::test]
    async fn assets_have_their_content_types() {
        for (path, kind) in [
            ("/ui/assets/app.js", "text/javascript; charset=utf-8"),
            ("/ui/assets/keys.js", "text/javascript; charset=utf-8"),
            ("/ui/assets/style.css", "text/css; charset=utf-8"),
            ("/ui/assets/icon.svg", "image/svg+xml"),
        ] {
            let response = get(path, &[]).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header_of(&response, "content-type"), kind, "{path}");
            assert_eq!(header_of(&response, "cache-control"), "no-cache");
            assert!(response.headers().contains_key("content-security-policy"));
            assert!(!body(response).await.is_empty());
        }
    }

    #[tokio::test]
    async fn every_module_an_asset_imports_is_served() {
        for asset in ASSETS.iter().filter(|a| a.content_type == JAVASCRIPT) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let module = line
                    .rsplit_once("from './")
                    .and_then(|(_, rest)| rest.split_once('\''))
                    .map(|(name, _)| name)
                    .unwrap_or_else(|| panic!("{}: unexpected import {line}", asset.name));
                let response = get(&format!("/ui/assets/{module}"), &[]).await;
                assert_eq!(response.status(), StatusCode::OK, "{}: {line}", asset.name);
            }
        }
    }

    #[tokio::test]
    async fn unknown_assets_and_pages_are_404() {
        for path in [
            "/ui/assets/nope.js",
            "/ui/assets/..%2Fsrc%2Flib.rs",
            "/ui/elsewhere",
            "/ui/namespaces/x/y",
        ] {
            let response = get(path, &[]).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert!(response.headers().contains_key("content-security-policy"));
        }
    }

    #[tokio::test]
    async fn a_cached_asset_is_revalidated_by_its_etag() {
        let first = get("/ui/assets/app.js", &[]).await;
        let etag = header_of(&first, "etag").to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
        let again = get("/ui/assets/app.js", &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body(again).await.is_empty());
        let other = get("/ui/assets/app.js", &[("if-none-match", "\"stale\"")]).await;
        assert_eq!(other.status(), StatusCode::OK);
        let css = get("/ui/assets/style.css", &[]).await;
        assert_ne!(header_of(&css, "etag"), etag, "each asset has its own tag");
    }

    #[tokio::test]
    async fn the_config_names_the_node_and_no_secret() {
        let response = get("/ui/config.json", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header_of(&response, "cache-control"), "no-store");
        let config: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
        assert_eq!(
            config,
            serde_json::json!({ "role": "edge", "node_id": "2", "default_account": "dev" })
        );
    }
}
