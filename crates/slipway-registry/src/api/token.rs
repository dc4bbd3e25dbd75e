//! The token endpoint (`/v2/token`), Docker's token authentication: `GET` with optional
//! Basic credentials and `scope=` parameters (what `docker login/push/pull` and skopeo use),
//! and the OAuth2 password grant by `POST`. The token grants, per requested repository,
//! the requested actions the principal has; a repository it may not touch is listed with
//! no actions. The token carries the principal's credential, and no bearer token is
//! accepted as a password here (see [`crate::token`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::{Action, Principal, Scope};
use crate::error::{ApiError, ErrorCode};
use crate::name::RepoName;
use crate::registry::Shared;

use super::{Identity, Query, access, header_str};

/// Largest form body accepted by `POST /v2/token`.
const MAX_FORM: usize = 64 * 1024;

pub(crate) async fn get(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let query = Query::parse(request.uri().query());
    let headers = request.headers();
    let principal = match header_str(headers, axum::http::header::AUTHORIZATION) {
        None => Principal::anonymous(),
        Some(value) => {
            let credentials = value
                .trim()
                .strip_prefix("Basic ")
                .or_else(|| value.trim().strip_prefix("basic "));
            let found = match credentials {
                Some(c) => access::basic_identity(&shared, c).await,
                // A bearer token (or any other scheme) buys no token.
                None => Err(
                    "the token endpoint takes Basic credentials (an API token as \
                     the password), not a bearer token",
                ),
            };
            match found {
                Ok(p) => p,
                Err(message) => return bad_credentials(&shared, headers, message),
            }
        }
    };
    issue(&shared, &principal, &query)
}

pub(crate) async fn post(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let headers = request.headers().clone();
    let body = match axum::body::to_bytes(request.into_body(), MAX_FORM).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(ErrorCode::Unsupported, "token request body too large")
                .with_status(StatusCode::BAD_REQUEST)
                .into_response();
        }
    };
    let form = Query::parse(std::str::from_utf8(&body).ok());
    if form.get("grant_type") != Some("password") {
        return ApiError::new(
            ErrorCode::Unsupported,
            "only grant_type=password is supported; use GET with Basic credentials",
        )
        .with_status(StatusCode::BAD_REQUEST)
        .into_response();
    }
    let user = form.get("username").unwrap_or("");
    let password = form.get("password").unwrap_or("");
    match access::password_identity(&shared, user, password).await {
        Ok(p) => issue(&shared, &p, &form),
        Err(message) => bad_credentials(&shared, &headers, message),
    }
}

fn bad_credentials(shared: &Shared, headers: &axum::http::HeaderMap, message: &str) -> Response {
    let mut e = ApiError::new(ErrorCode::Unauthorized, message);
    e.challenge = Some(format!(
        "Basic realm=\"{}\"",
        access::base_url(shared, headers)
    ));
    e.into_response()
}

fn issue(shared: &Shared, principal: &Principal, query: &Query) -> Response {
    let requested = Scope::parse_all(query.all("scope"));
    let granted: Vec<Scope> = requested
        .into_iter()
        .filter_map(|scope| grant(shared, principal, scope))
        .collect();
    let ttl = shared.config.token_ttl;
    let (token, claims) = shared.signer.issue(
        &principal.name,
        principal.credential.as_deref(),
        granted,
        ttl,
    );
    let issued_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(claims.iat);
    axum::Json(serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl.as_secs(),
        "issued_at": humantime::format_rfc3339_seconds(issued_at).to_string(),
    }))
    .into_response()
}

/// The part of `scope` the principal gets; `None` drops scopes of unknown kinds or names.
fn grant(shared: &Shared, principal: &Principal, mut scope: Scope) -> Option<Scope> {
    let identity = Identity::Principal(principal.clone());
    match scope.kind.as_str() {
        "repository" => {
            let repo = RepoName::parse(&scope.name)?;
            scope
                .actions
                .retain(|&action| identity.may(shared, repo.as_str(), action));
            Some(scope)
        }
        // `registry:catalog:*`: the whole catalog, for principals who may pull everything.
        "registry" if scope.name == "catalog" => {
            let all = principal.grants.iter().any(|g| {
                g.repositories == crate::auth::RepoPattern::All && g.actions.contains(&Action::Pull)
            });
            scope.actions = if all { vec![Action::Pull] } else { Vec::new() };
            Some(scope)
        }
        _ => None,
    }
}
