//! Listing routes: `tags/list` and `_catalog`, both paginated with `n` and `last` and a
//! `Link: <…>; rel="next"` header, names in ASCII order.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use crate::auth::Action;
use crate::error::{ApiError, ErrorCode};
use crate::name::RepoName;
use crate::registry::Shared;

use super::{Identity, Query, respond};

/// Page size when the client gives none, and the most it may ask for.
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;

fn page_size(query: &Query) -> Result<usize, ApiError> {
    match query.get("n") {
        None | Some("") => Ok(DEFAULT_PAGE),
        Some(n) => n.parse::<usize>().map(|n| n.min(MAX_PAGE)).map_err(|_| {
            ApiError::new(
                ErrorCode::PaginationNumberInvalid,
                format!("`n={n}` is not a non-negative number"),
            )
        }),
    }
}

fn json_response(body: &serde_json::Value, link: Option<String>) -> Result<Response, ApiError> {
    let bytes = serde_json::to_vec(body).map_err(|e| ApiError::internal("encoding a list", e))?;
    let mut headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("Content-Length", bytes.len().to_string()),
    ];
    if let Some(link) = link {
        headers.push(("Link", link));
    }
    Ok(respond(StatusCode::OK, &headers, Body::from(bytes)))
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `GET /v2/<name>/tags/list[?n=&last=]`.
pub(crate) async fn tags(
    shared: &Shared,
    repo: &RepoName,
    query: &Query,
) -> Result<Response, ApiError> {
    let n = page_size(query)?;
    let last = query.get("last").map(str::to_string);
    let r = repo.clone();
    let tags = shared
        .store
        .blocking(move |s| s.tags(&r))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NameUnknown,
                format!("repository `{repo}` is not known to this registry"),
            )
        })?;
    let after: Vec<String> = match &last {
        Some(l) => tags
            .into_iter()
            .filter(|t| t.as_str() > l.as_str())
            .collect(),
        None => tags,
    };
    let more = after.len() > n;
    let page: Vec<String> = after.into_iter().take(n).collect();
    let link = match page.last() {
        Some(last) if more => Some(format!(
            "</v2/{repo}/tags/list?n={n}&last={}>; rel=\"next\"",
            encode(last)
        )),
        _ => None,
    };
    json_response(
        &serde_json::json!({ "name": repo.as_str(), "tags": page }),
        link,
    )
}

/// `GET /v2/_catalog[?n=&last=]`: the repositories this caller may pull. Only the in-memory
/// index is read, from `last` on, never the store.
pub(crate) fn catalog(
    shared: &Shared,
    headers: &HeaderMap,
    identity: &Identity,
    query: &Query,
) -> Result<Response, ApiError> {
    if identity.is_anonymous() && shared.config.anonymous_pull.is_empty() {
        return Err(ApiError::unauthorized(
            "authentication required",
            super::access::challenge(shared, headers, Some("registry:catalog:*"), None),
        ));
    }
    let n = page_size(query)?;
    let last = query.get("last");
    let whole_catalog = match identity {
        Identity::Token(claims) => claims
            .access
            .iter()
            .any(|s| s.kind == "registry" && s.name == "catalog" && !s.actions.is_empty()),
        Identity::Principal(_) => false,
    };
    let (page, more) = shared.store.repositories_page(last, n, |repo| {
        whole_catalog || identity.may(shared, repo, Action::Pull)
    });
    let link = match page.last() {
        Some(last) if more => Some(format!(
            "</v2/_catalog?n={n}&last={}>; rel=\"next\"",
            encode(last)
        )),
        _ => None,
    };
    json_response(&serde_json::json!({ "repositories": page }), link)
}
