//! What keeps other origins out: the UI's server-side sessions, the same-origin check and
//! form tokens of state-changing UI requests, the JSON-only rule of the REST API, the
//! security headers of every answer and the optional `/metrics` token.
//!
//! Invariants:
//! - The session cookie holds a random 32-byte id, never a token; the store keeps only its
//!   SHA-256. A session ends at its expiry, on logout and when its token is deleted.
//! - The cookie is `HttpOnly; SameSite=Strict`, and `Secure` whenever the request came in
//!   over HTTPS (a `public_url` starting with `https://`, or `X-Forwarded-Proto: https`
//!   from a loopback proxy).
//! - "Site" ignores ports and subdomains, so SameSite alone lets a page on another port of
//!   the same host post the forms: every state-changing UI request must also be
//!   same-origin ([`same_origin`]: `Sec-Fetch-Site`, else `Origin`; neither is a refusal),
//!   and every form of a session must carry that session's form token ([`form_token_ok`]).
//! - The cookie only reads the REST API (GET, HEAD: the UI's live streams and raw logs); a
//!   change through the API needs `Authorization: Bearer`, and a body must be JSON.

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::app::AppState;
use crate::auth;
use crate::store::{Session, Token};

/// The cookie that carries the session id.
pub const COOKIE: &str = "slipway_session";

/// The page's own scripts and styles are served files (`/static/…`), so nothing inline
/// needs allowing; no page may be framed (clickjacking) nor post anywhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Adds the security headers to every answer (those a handler set are kept).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ] {
        headers.entry(name).or_insert(value);
    }
    response
}

/// `/api/…` but the runner protocol: a request that changes something must carry a JSON
/// body or none (a form or `text/plain` is what a cross-site page can send without CORS).
pub async fn json_only(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if changes && path.starts_with("/api/") && !path.starts_with("/api/runner/") {
        let headers = req.headers();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
        let has_body = headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() != "0");
        let json = content_type.as_deref().is_some_and(is_json);
        if !json && (has_body || content_type.is_some()) {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "{} {path}: the body must be JSON, sent as `Content-Type: application/json` \
                     (got {})",
                    req.method(),
                    content_type.map_or_else(|| "no Content-Type".to_owned(), |c| format!("`{c}`"))
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// `/metrics`: open unless `--metrics-token` is set, then only with that bearer token.
pub fn metrics_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.config.metrics_token else {
        return Ok(());
    };
    match bearer(headers) {
        Some(presented) if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "/metrics: that is not the metrics token (the server's --metrics-token)",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "/metrics needs `Authorization: Bearer <token>` with the server's --metrics-token \
             (Prometheus: `authorization: {credentials: …}` in the scrape config)",
        )),
    }
}

/// The token of `Authorization: Bearer …`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// A cookie's value.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// The live session the request's cookie names, if any.
pub async fn session(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let id = cookie(headers, COOKIE).filter(|id| !id.is_empty())?;
    match state
        .store
        .session_by_hash(&auth::hash(&id), crate::now_ms())
        .await
    {
        Ok(session) => session,
        Err(e) => {
            tracing::error!("reading a session: {e}");
            None
        }
    }
}

/// Opens a session for an admin token; the `Set-Cookie` value that hands it to the browser.
pub async fn open_session(
    state: &AppState,
    token: &Token,
    https: bool,
) -> Result<(Session, String), ApiError> {
    let id = auth::generate();
    let now = crate::now_ms();
    let ttl = crate::app::millis(state.config.session_ttl);
    let session = state
        .store
        .create_session(
            &auth::hash(&id),
            token.id,
            &auth::generate(),
            now,
            now.saturating_add(ttl),
        )
        .await?;
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        state.config.session_ttl.as_secs(),
        if https { "; Secure" } else { "" }
    );
    Ok((session, cookie))
}

/// Ends the request's session (if any); the `Set-Cookie` value that removes the cookie.
pub async fn close_session(state: &AppState, headers: &HeaderMap, https: bool) -> String {
    if let Some(id) = cookie(headers, COOKIE).filter(|id| !id.is_empty())
        && let Err(e) = state.store.delete_session(&auth::hash(&id)).await
    {
        tracing::error!("ending a session: {e}");
    }
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if https { "; Secure" } else { "" }
    )
}

/// Whether the request reached us over HTTPS: the public URL says so, or a proxy on this
/// host says so (`X-Forwarded-Proto` is only believed from loopback: anyone else could
/// send it).
pub fn is_https(state: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> bool {
    if state
        .config
        .public_url
        .to_ascii_lowercase()
        .starts_with("https://")
    {
        return true;
    }
    peer.is_some_and(|p| p.ip().is_loopback())
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The peer address, when the listener recorded it ([`crate::listen::serve`] does).
pub fn peer(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}

/// Checks that a state-changing request comes from one of our own pages: the browser's
/// `Sec-Fetch-Site` must be `same-origin`; without it, `Origin` must be this server's
/// (its public URL's origin, or the origin the request was addressed to); without either,
/// the request is refused (every browser of the last years sends one on a POST).
pub fn same_origin(state: &AppState, headers: &HeaderMap) -> Result<(), String> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(site) = text("sec-fetch-site") {
        return if site.eq_ignore_ascii_case("same-origin") {
            Ok(())
        } else {
            Err(format!(
                "the browser says this request came from another origin (Sec-Fetch-Site: {site}); \
                 use the form on this server's own page"
            ))
        };
    }
    let Some(origin) = text("origin") else {
        return Err(
            "neither Sec-Fetch-Site nor Origin was sent, so this request may come from \
                    another site; use the form on this server's own page (scripts: the REST API \
                    with a bearer token)"
                .to_owned(),
        );
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    let public = origin_of(&state.config.public_url);
    let addressed = text("host").map(|h| h.to_ascii_lowercase());
    let matches_host = addressed.as_deref().is_some_and(|host| {
        origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host)
    });
    if origin == public || matches_host {
        Ok(())
    } else {
        Err(format!(
            "this request came from the page of another origin ({origin}), not from {public}; \
             use the form on this server's own page"
        ))
    }
}

/// `https://Host:1/x` → `https://host:1`.
fn origin_of(url: &str) -> String {
    let url = url.trim().to_ascii_lowercase();
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest)),
        None => url,
    }
}

/// Whether a form carries its session's form token (compared in constant time).
pub fn form_token_ok(session: &Session, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| bool::from(p.trim().as_bytes().ct_eq(session.csrf.as_bytes())))
}
