//! Authentication (Basic through the caller's [`crate::Authenticator`], Bearer through our
//! own signed tokens, whose credential the authenticator must still call live) and
//! authorisation of one repository action.
//!
//! A bearer token is never a password: Basic credentials whose password verifies as one of
//! our tokens are refused here and at the token endpoint, with a hint, so a token cannot be
//! exchanged for a fresh one (see [`crate::token`]).
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
        let claims = shared.signer.verify(credentials.trim()).map_err(|e| {
            ApiError::unauthorized(
                format!("{e}; log in again"),
                challenge(shared, headers, None, Some("invalid_token")),
            )
        })?;
        if let Err(message) = credential_live(shared, &claims).await {
            return Err(ApiError::unauthorized(
                message,
                challenge(shared, headers, None, Some("invalid_token")),
            ));
        }
        return Ok(Identity::Token(claims));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        return match basic_identity(shared, credentials).await {
            Ok(principal) => Ok(Identity::Principal(principal)),
            Err(message) => Err(ApiError::unauthorized(
                message,
                challenge(shared, headers, None, None),
            )),
        };
    }
    Err(ApiError::unauthorized(
        format!("unsupported authorization scheme `{scheme}` (use Basic or Bearer)"),
        challenge(shared, headers, None, None),
    ))
}

/// Whether the credential a named token was issued for still stands; the reason if not.
/// Anonymous tokens carry no credential (they grant public pulls only).
async fn credential_live(shared: &Shared, claims: &Claims) -> Result<(), &'static str> {
    if claims.sub.is_empty() {
        return Ok(());
    }
    match &claims.cred {
        Some(cred) if shared.authenticator.credential_live(cred).await => Ok(()),
        Some(_) => Err(
            "the credential this token was issued for was revoked or has ended (a deleted \
             token, or a pipeline's stage that stopped); log in again with a current token",
        ),
        None => Err("the token names no credential (issued by an older version); log in again"),
    }
}

/// Who Basic credentials (`base64(user:password)`) are: a principal the authenticator
/// accepts, never one of our bearer tokens; otherwise why not.
pub(crate) async fn basic_identity(
    shared: &Shared,
    credentials: &str,
) -> Result<Principal, &'static str> {
    const BAD: &str = "incorrect username or password";
    let decoded = STANDARD.decode(credentials.trim()).map_err(|_| BAD)?;
    let text = String::from_utf8(decoded).map_err(|_| BAD)?;
    let (user, password) = text.split_once(':').ok_or(BAD)?;
    password_identity(shared, user, password).await
}

/// The principal of a username and password (Basic credentials or the OAuth2 password
/// grant); a password that is one of our tokens is refused whatever the authenticator says.
pub(crate) async fn password_identity(
    shared: &Shared,
    user: &str,
    password: &str,
) -> Result<Principal, &'static str> {
    // Checked first, and for any signature-valid token (even an expired one): a bearer
    // token must never buy another.
    if matches!(
        shared.signer.verify(password),
        Ok(_) | Err(crate::token::TokenError::Expired)
    ) {
        return Err(
            "a registry bearer token is not a password: log in with an API token \
             (`docker login -u NAME -p TOKEN`)",
        );
    }
    match shared.authenticator.authenticate(user, password).await {
        // The authenticator may not hand out the anonymous principal for real credentials.
        Some(principal) if !principal.is_anonymous() => Ok(principal),
        _ => Err("incorrect username or password"),
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
