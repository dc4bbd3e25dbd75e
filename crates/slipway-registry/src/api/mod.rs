//! The HTTP API: `/v2/` routes of the distribution spec and the token endpoint.
//!
//! Repository names contain `/`, so routes are not matched by the router's patterns but
//! parsed here ([`Route::parse`]) from the end of the path. Every request is authenticated
//! and authorised ([`access`]) for the one action its route and method need before a
//! handler runs.

mod access;
mod blobs;
mod listing;
mod manifests;
mod token;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::auth::Action;
use crate::digest::Digest;
use crate::error::{ApiError, ErrorCode};
use crate::name::{Reference, RepoName};
use crate::registry::Shared;

pub(crate) use access::Identity;

/// The `/v2/` router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/token", get(token::get).post(token::post))
        .route("/v2/{*rest}", any(dispatch))
        .layer(axum::middleware::map_response(api_version_header))
        .with_state(shared)
}

async fn api_version_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

/// `GET /v2/`: 200 for any valid credentials, the challenge otherwise (`docker login`).
async fn base(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let headers = request.headers();
    match access::identify(&shared, headers).await {
        Ok(identity) if !identity.is_anonymous() => {
            (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response()
        }
        Ok(_) => ApiError::unauthorized(
            "authentication required",
            access::challenge(&shared, headers, None, None),
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// A parsed `/v2/…` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, Reference),
    Blob(RepoName, Digest),
    UploadStart(RepoName),
    Upload(RepoName, String),
    Referrers(RepoName, Digest),
}

impl Route {
    /// Parses the path after `/v2/` (percent-decoded).
    pub(crate) fn parse(rest: &str) -> Result<Route, ApiError> {
        if rest == "_catalog" {
            return Ok(Route::Catalog);
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let n = parts.len();
        let name = |end: usize| -> Result<RepoName, ApiError> {
            let text = parts[..end].join("/");
            RepoName::parse(&text).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NameInvalid,
                    format!(
                        "invalid repository name `{text}`: lowercase letters and digits, separated by `.`, `_`, `__`, `-` or `/`"
                    ),
                )
            })
        };
        let digest = |text: &str| -> Result<Digest, ApiError> {
            text.parse().map_err(|e: crate::digest::DigestError| {
                ApiError::new(ErrorCode::DigestInvalid, e.to_string())
            })
        };
        let not_found = || {
            ApiError::new(
                ErrorCode::NameUnknown,
                format!("no such endpoint: /v2/{rest}"),
            )
            .with_status(StatusCode::NOT_FOUND)
        };
        if n >= 3 && parts[n - 2] == "tags" && parts[n - 1] == "list" {
            return Ok(Route::Tags(name(n - 2)?));
        }
        if n >= 4 && parts[n - 3] == "blobs" && parts[n - 2] == "uploads" {
            let repo = name(n - 3)?;
            return Ok(match parts[n - 1] {
                "" => Route::UploadStart(repo),
                id => Route::Upload(repo, id.to_string()),
            });
        }
        if n >= 3 && parts[n - 2] == "blobs" && parts[n - 1] == "uploads" {
            return Ok(Route::UploadStart(name(n - 2)?));
        }
        if n >= 3 && parts[n - 2] == "blobs" {
            return Ok(Route::Blob(name(n - 2)?, digest(parts[n - 1])?));
        }
        if n >= 3 && parts[n - 2] == "referrers" {
            return Ok(Route::Referrers(name(n - 2)?, digest(parts[n - 1])?));
        }
        if n >= 3 && parts[n - 2] == "manifests" {
            let repo = name(n - 2)?;
            let reference = Reference::parse(parts[n - 1]).ok_or_else(|| {
                if parts[n - 1].contains(':') {
                    ApiError::new(
                        ErrorCode::DigestInvalid,
                        format!("`{}` is not a valid digest", parts[n - 1]),
                    )
                } else {
                    ApiError::new(
                        ErrorCode::TagInvalid,
                        format!(
                            "`{}` is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})",
                            parts[n - 1]
                        ),
                    )
                }
            })?;
            return Ok(Route::Manifest(repo, reference));
        }
        Err(not_found())
    }

    /// The repository and action a request needs (`None` for the catalog, filtered per
    /// repository instead).
    fn needs(&self, method: &Method) -> Option<(&RepoName, Action)> {
        let write = |m: &Method| m == Method::DELETE;
        match self {
            Route::Catalog => None,
            Route::Tags(repo) | Route::Referrers(repo, _) => Some((repo, Action::Pull)),
            Route::Manifest(repo, _) | Route::Blob(repo, _) => {
                if write(method) {
                    Some((repo, Action::Delete))
                } else if method == Method::PUT {
                    Some((repo, Action::Push))
                } else {
                    Some((repo, Action::Pull))
                }
            }
            Route::UploadStart(repo) | Route::Upload(repo, _) => Some((repo, Action::Push)),
        }
    }
}

async fn dispatch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    match handle(&shared, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn handle(shared: &Arc<Shared>, request: Request) -> Result<Response, ApiError> {
    let path = percent_decode(request.uri().path());
    let rest = path.strip_prefix("/v2/").unwrap_or(&path).to_string();
    let route = Route::parse(&rest)?;
    let method = request.method().clone();
    let identity = access::identify(shared, request.headers()).await?;
    if let Some((repo, action)) = route.needs(&method) {
        access::authorize(shared, request.headers(), &identity, repo, action)?;
    }
    let query = Query::parse(request.uri().query());
    let m = &method;
    match route {
        Route::Catalog if m == Method::GET => {
            listing::catalog(shared, request.headers(), &identity, &query)
        }
        Route::Tags(repo) if m == Method::GET => listing::tags(shared, &repo, &query).await,
        Route::Referrers(repo, digest) if m == Method::GET => {
            manifests::referrers(shared, &repo, &digest, &query).await
        }
        Route::Manifest(repo, reference) if m == Method::GET || m == Method::HEAD => {
            manifests::get(
                shared,
                &repo,
                &reference,
                request.headers(),
                m == Method::HEAD,
            )
            .await
        }
        Route::Manifest(repo, reference) if m == Method::PUT => {
            manifests::put(shared, &identity, &repo, &reference, request).await
        }
        Route::Manifest(repo, reference) if m == Method::DELETE => {
            manifests::delete(shared, &identity, &repo, &reference).await
        }
        Route::Blob(repo, digest) if m == Method::GET || m == Method::HEAD => {
            blobs::get(shared, &repo, &digest, request.headers(), m == Method::HEAD).await
        }
        Route::Blob(repo, digest) if m == Method::DELETE => {
            blobs::delete(shared, &identity, &repo, &digest).await
        }
        Route::UploadStart(repo) if m == Method::POST => {
            blobs::start_upload(shared, &identity, &repo, &query, request).await
        }
        Route::Upload(repo, id) if m == Method::PATCH => {
            blobs::patch_upload(shared, &repo, &id, request).await
        }
        Route::Upload(repo, id) if m == Method::PUT => {
            blobs::finish_upload(shared, &repo, &id, &query, request).await
        }
        Route::Upload(repo, id) if m == Method::GET => {
            blobs::upload_status(shared, &repo, &id).await
        }
        Route::Upload(repo, id) if m == Method::DELETE => {
            blobs::cancel_upload(shared, &repo, &id).await
        }
        _ => Err(ApiError::new(
            ErrorCode::Unsupported,
            format!("method {method} is not supported on /v2/{rest}"),
        )),
    }
}

/// Query parameters in order (a name may repeat: `scope`).
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(query: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `%XX` escapes (clients may send `sha256%3A…`); invalid escapes stay as they are.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A response with the given status, headers and body.
pub(crate) fn respond(
    status: StatusCode,
    headers: &[(&'static str, String)],
    body: Body,
) -> Response {
    let empty = axum::body::HttpBody::size_hint(&body).exact() == Some(0);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let map: &mut HeaderMap = response.headers_mut();
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            map.append(*name, v);
        }
    }
    if empty && !map.contains_key(header::CONTENT_LENGTH) && status != StatusCode::NO_CONTENT {
        map.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    response
}

/// The first value of header `name` as text.
pub(crate) fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
