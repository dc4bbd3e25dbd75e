//! Authentication (Basic through the caller's [`crate::Authenticator`], Bearer through our
//! own signed tokens) and authorisation of one repository action.
//!
//! Outcomes, as Docker clients expect them:
//! - no or bad credentials, or a token that never asked for this repository: 401 with a
//!   `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge (the client then fetches
//!   a token for that scope and retries);
//! - valid credentials (or a token that asked for the repository) without the permission:
//!   403 `DENIED`.

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::auth::{Action, Principal};
use crate::error::{ApiError, ErrorCode};
use crate::name::RepoName;
use crate::registry::Shared;
use crate::token::Claims;

use super::header_str;

/// Who is calling.
#[derive(Debug, Clone)]
pub(crate) enum Identity {
    /// Basic credentials the authenticator accepted, or nobody (anonymous).
    Principal(Principal),
    /// A valid bearer token.
    Token(Claims),
}

impl Identity {
    pub(crate) fn is_anonymous(&self) -> bool {
        match self {
            Identity::Principal(p) => p.is_anonymous(),
            Identity::Token(c) => c.sub.is_empty(),
        }
    }

    /// Name for events and logs.
    pub(crate) fn name(&self) -> &str {
        match self {
            Identity::Principal(p) => &p.name,
            Identity::Token(c) => &c.sub,
        }
    }

    /// Whether it may do `action` on `repo`, counting public repositories.
    pub(crate) fn may(&self, shared: &Shared, repo: &str, action: Action) -> bool {
        if action == Action::Pull && shared.is_public(repo) {
            return true;
        }
        match self {
            Identity::Principal(p) => p.allows(repo, action),
            Identity::Token(c) => c.allows(repo, action) == Some(true),
        }
    }
}

/// Reads the `Authorization` header. Bad credentials are an error (401), none is anonymous.
pub(crate) async fn identify(shared: &Shared, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let Some(value) = header_str(headers, axum::http::header::AUTHORIZATION) else {
        return Ok(Identity::Principal(Principal::anonymous()));
    };
    let (scheme, credentials) = value.trim().split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return match shared.signer.verify(credentials.trim()) {
            Ok(claims) => Ok(Identity::Token(claims)),
            Err(e) => Err(ApiError::unauthorized(
                format!("{e}; log in again"),
                challenge(shared, headers, None, Some("invalid_token")),
            )),
        };
    }
    if scheme.eq_ignore_ascii_case("basic") {
        if let Some(identity) = basic_identity(shared, credentials).await {
            return Ok(identity);
        }
        return Err(ApiError::unauthorized(
            "incorrect username or password",
            challenge(shared, headers, None, None),
        ));
    }
    Err(ApiError::unauthorized(
        format!("unsupported authorization scheme `{scheme}` (use Basic or Bearer)"),
        challenge(shared, headers, None, None),
    ))
}

/// Who Basic credentials (`base64(user:password)`) are: a principal the authenticator
/// accepts, or, when the password is a token this registry signed (a pipeline's push
/// token used with `docker login`), that token.
pub(crate) async fn basic_identity(shared: &Shared, credentials: &str) -> Option<Identity> {
    let decoded = STANDARD.decode(credentials.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    if let Some(principal) = shared.authenticator.authenticate(user, password).await {
        // The authenticator may not hand out the anonymous principal for real credentials.
        return (!principal.is_anonymous()).then_some(Identity::Principal(principal));
    }
    match shared.signer.verify(password) {
        Ok(claims) if !claims.sub.is_empty() => Some(Identity::Token(claims)),
        _ => None,
    }
}

/// Allows the request or explains why not (401 with a challenge, or 403).
pub(crate) fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    identity: &Identity,
    repo: &RepoName,
    action: Action,
) -> Result<(), ApiError> {
    if identity.may(shared, repo.as_str(), action) {
        return Ok(());
    }
    let scope = scope_for(repo, action);
    let denied = || {
        ApiError::new(
            ErrorCode::Denied,
            format!(
                "requested access to the resource is denied: `{}` may not {} `{repo}`",
                identity.name(),
                action.as_str()
            ),
        )
    };
    match identity {
        Identity::Principal(p) if p.is_anonymous() => Err(ApiError::unauthorized(
            "authentication required",
            challenge(shared, headers, Some(&scope), None),
        )),
        Identity::Principal(_) => Err(denied()),
        Identity::Token(claims) => match claims.allows(repo.as_str(), action) {
            Some(_) if !claims.sub.is_empty() => Err(denied()),
            _ => Err(ApiError::unauthorized(
                "authentication required",
                challenge(shared, headers, Some(&scope), Some("insufficient_scope")),
            )),
        },
    }
}

/// The scope a client should ask for to do `action` (`pull,push` for pushes, as Docker asks).
pub(crate) fn scope_for(repo: &RepoName, action: Action) -> String {
    let actions = match action {
        Action::Pull => "pull",
        Action::Push => "pull,push",
        Action::Delete => "delete",
    };
    format!("repository:{repo}:{actions}")
}

/// The `WWW-Authenticate` value pointing clients at our token endpoint.
pub(crate) fn challenge(
    shared: &Shared,
    headers: &HeaderMap,
    scope: Option<&str>,
    error: Option<&str>,
) -> String {
    let mut value = format!(
        "Bearer realm=\"{}/v2/token\",service=\"{}\"",
        base_url(shared, headers),
        shared.signer.service()
    );
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(error) = error {
        value.push_str(&format!(",error=\"{error}\""));
    }
    value
}

/// `scheme://host[:port]` the client reached us at: the configured public URL, else the
/// `Host` header (https when a proxy says `X-Forwarded-Proto: https`).
pub(crate) fn base_url(shared: &Shared, headers: &HeaderMap) -> String {
    if let Some(url) = &shared.config.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let host = header_str(headers, axum::http::header::HOST)
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = match header_str(headers, "x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}
