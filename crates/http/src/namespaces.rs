//! Namespace routes: create, list, get, rename, delete.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use driftkv_core::limits::{
    DEFAULT_NAMESPACES_PER_PAGE, MAX_NAMESPACES_PER_PAGE, MAX_SMALL_BODY_BYTES,
};
use driftkv_core::{KvError, Namespace};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::body::read_json;
use crate::envelope::{ok, ok_no_result, ok_with_info, ApiResult};
use crate::extract::{AccountPath, NamespacePath, Params};
use crate::Service;

/// A namespace as the API shows it.
#[derive(Serialize)]
struct NamespaceJson {
    id: String,
    title: String,
    supports_url_encoding: bool,
}

impl From<&Namespace> for NamespaceJson {
    fn from(ns: &Namespace) -> Self {
        NamespaceJson {
            id: ns.id.to_string(),
            title: ns.title.clone(),
            supports_url_encoding: true,
        }
    }
}

#[derive(Deserialize)]
struct TitleBody {
    title: String,
}

pub async fn create(
    State(service): State<Service>,
    AccountPath(account): AccountPath,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let TitleBody { title } = read_json(&headers, body, MAX_SMALL_BODY_BYTES).await?;
    let ns = service.create_namespace(&account, &title).await?;
    ok(NamespaceJson::from(&ns))
}

pub async fn list(
    State(service): State<Service>,
    AccountPath(account): AccountPath,
    params: Params,
) -> ApiResult {
    let page = params.number_in("page", 1, usize::MAX, 1)?;
    let per_page = params.number_in(
        "per_page",
        1,
        MAX_NAMESPACES_PER_PAGE,
        DEFAULT_NAMESPACES_PER_PAGE,
    )?;
    let mut all = service.list_namespaces(&account).await?;
    match params.text("order").unwrap_or("id") {
        "id" => all.sort_by_key(|ns| ns.id),
        "title" => all.sort_by(|a, b| a.title.cmp(&b.title).then(a.id.cmp(&b.id))),
        other => {
            return Err(KvError::InvalidParameter(format!(
                "order must be 'id' or 'title', got {other:?}"
            ))
            .into())
        }
    }
    match params.text("direction").unwrap_or("asc") {
        "asc" => {}
        "desc" => all.reverse(),
        other => {
            return Err(KvError::InvalidParameter(format!(
                "direction must be 'asc' or 'desc', got {other:?}"
            ))
            .into())
        }
    }
    let total = all.len();
    let items: Vec<NamespaceJson> = all
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(NamespaceJson::from)
        .collect();
    let info = json!({
        "page": page,
        "per_page": per_page,
        "count": items.len(),
        "total_count": total,
        "total_pages": total.div_ceil(per_page),
    });
    ok_with_info(items, info)
}

pub async fn get(State(service): State<Service>, path: NamespacePath) -> ApiResult {
    ok(NamespaceJson::from(
        &service.namespace(&path.account, path.id).await?,
    ))
}

pub async fn rename(
    State(service): State<Service>,
    path: NamespacePath,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let TitleBody { title } = read_json(&headers, body, MAX_SMALL_BODY_BYTES).await?;
    ok(NamespaceJson::from(
        &service
            .rename_namespace(&path.account, path.id, &title)
            .await?,
    ))
}

pub async fn delete(State(service): State<Service>, path: NamespacePath) -> ApiResult {
    service.delete_namespace(&path.account, path.id).await?;
    ok_no_result()
}
