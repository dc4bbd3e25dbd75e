//! HTTP: the router and what every handler shares (errors, callers, repository paths).
//!
//! | prefix | what | auth |
//! |---|---|---|
//! | `POST /hook` | git-host webhooks ([`hooks`]) | the delivery's signature |
//! | `/api/runner/…` | the runner protocol ([`runner`]) | a runner (or admin) bearer token |
//! | `/api/…` GET, HEAD | the REST API ([`rest`]), SSE ([`live`]) | `Authorization: Bearer <token>`, or the UI's session cookie |
//! | `/api/…` POST, PATCH, DELETE | the REST API ([`rest`]) | `Authorization: Bearer <token>` only; a body only as `application/json` (415 otherwise) |
//! | `/v2/…` | the image registry | registry tokens (Basic with a Slipway token) |
//! | `/`, `/repos/…`, `/runners`, `/registry…` GET | the web UI ([`pages`]) | the `slipway_session` cookie (a server-side session, [`guard`]) |
//! | the UI's POSTs (forms, `/logout`) | the web UI ([`pages`]) | the session cookie, a same-origin request (`Sec-Fetch-Site` / `Origin`) and the session's form token (`csrf`) |
//! | `POST /login` | opens a session for an admin token | a same-origin request |
//! | `GET /api/proxy/routes` | the edge proxy's routes ([`rest::proxy_routes`]) | an admin token |
//! | `/healthz` | health | none |
//! | `/metrics` | Prometheus | none, or `Authorization: Bearer <--metrics-token>` when set |
//!
//! Every answer carries `Content-Security-Policy` (`frame-ancestors 'none'`, scripts and
//! styles only from `/static/`), `X-Content-Type-Options: nosniff`, `Referrer-Policy:
//! same-origin` and `X-Frame-Options: DENY` ([`guard::security_headers`]).
//!
//! Repository names contain `/` (`owner/name`, GitLab groups `a/b/c`), so routes under a
//! repository are one wildcard, split by [`RepoPath::parse`].

pub mod deploy;
pub mod deploy_pages;
pub mod guard;
pub mod hooks;
pub mod live;
pub mod notify;
pub mod notify_pages;
pub mod pages;
pub mod rest;
pub mod runner;
pub mod service_logs;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::app::AppState;
use crate::auth;
use crate::store::{StoreError, Token};

pub fn router(state: Arc<AppState>) -> Router {
    let registry = state.registry.router();
    let app = Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/hook", post(hooks::receive))
        .route("/api/runner/register", post(runner::register))
        .route("/api/runner/poll", post(runner::poll))
        .route("/api/runner/stages/{id}/heartbeat", post(runner::heartbeat))
        .route("/api/runner/stages/{id}/events", post(runner::events))
        .route("/api/runner/stages/{id}/done", post(runner::done))
        .route("/api/runner/stages/{id}/deploy", post(runner::deploy))
        .route("/api/repos", get(rest::list_repos).post(rest::add_repo))
        .route(
            "/api/repos/{*path}",
            get(rest::repo_get)
                .post(rest::repo_post)
                .patch(rest::repo_patch)
                .delete(rest::repo_delete),
        )
        .route("/api/runners", get(rest::list_runners))
        .route("/api/proxy/routes", get(rest::proxy_routes))
        .route("/api/tokens", get(rest::list_tokens).post(rest::add_token))
        .route("/api/registry/gc", post(rest::registry_gc))
        .route(
            "/api/notify/channels",
            get(notify::list_channels).post(notify::add_channel),
        )
        .route(
            "/api/notify/channels/{name}",
            get(notify::get_channel).delete(notify::delete_channel),
        )
        .route(
            "/api/notify/channels/{name}/test",
            post(notify::test_channel),
        )
        .route("/api/notify/deliveries", get(notify::list_deliveries))
        .route("/api/envs", get(deploy::list_envs).post(deploy::add_env))
        .route(
            "/api/envs/{env}",
            get(deploy::get_env).delete(deploy::delete_env),
        )
        .route(
            "/api/envs/{env}/secrets",
            get(deploy::list_env_secrets).post(deploy::put_env_secret),
        )
        .route(
            "/api/envs/{env}/secrets/{name}",
            axum::routing::delete(deploy::delete_env_secret),
        )
        .route(
            "/api/envs/{env}/rules",
            get(deploy::list_rules).post(deploy::add_rule),
        )
        .route(
            "/api/envs/{env}/rules/{id}",
            axum::routing::delete(deploy::delete_rule),
        )
        .route("/api/stacks", get(deploy::list_stacks))
        .route(
            "/api/stacks/{env}/{stack}",
            get(deploy::get_stack)
                .post(deploy::deploy_stack)
                .delete(deploy::delete_stack),
        )
        .route(
            "/api/stacks/{env}/{stack}/revisions",
            get(deploy::stack_history),
        )
        .route(
            "/api/stacks/{env}/{stack}/revisions/{number}",
            get(deploy::get_revision),
        )
        .route(
            "/api/stacks/{env}/{stack}/rollback",
            post(deploy::rollback_stack),
        )
        .route(
            "/api/stacks/{env}/{stack}/rollout/{command}",
            post(deploy::steer_rollout),
        )
        .route(
            "/api/stacks/{env}/{stack}/events",
            get(deploy::stack_events),
        )
        .route(
            "/api/stacks/{env}/{stack}/webhook",
            post(deploy::make_webhook),
        )
        .route(
            "/hooks/deploy/{env}/{stack}/{token}",
            post(deploy::redeploy_hook),
        )
        .route("/api/logs/{env}/{stack}", get(service_logs::get_logs))
        .route(
            "/api/log-routes",
            get(service_logs::list_routes).post(service_logs::add_route),
        )
        .route(
            "/api/log-routes/{id}",
            axum::routing::delete(service_logs::delete_route),
        )
        .route(
            "/api/tokens/{id}",
            axum::routing::delete(rest::delete_token),
        )
        .merge(pages::routes())
        .merge(service_logs::page_routes())
        .layer(axum::middleware::from_fn(guard::json_only))
        .with_state(state);
    // The registry's routes carry their own state.
    app.merge(registry)
        .layer(axum::middleware::from_fn(guard::security_headers))
}

async fn health() -> &'static str {
    "ok\n"
}

async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = guard::metrics_allowed(&state, &headers) {
        return e.into_response();
    }
    let proxy = state
        .config
        .edge
        .as_ref()
        .map(|e| e.render_metrics())
        .unwrap_or_default();
    match state.store.queue_stats().await {
        Ok(s) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            format!(
                "# HELP slipway_stages_pending Stages waiting for a runner.\n\
                 # TYPE slipway_stages_pending gauge\n\
                 slipway_stages_pending {}\n\
                 # HELP slipway_stages_running Stages running on a runner.\n\
                 # TYPE slipway_stages_running gauge\n\
                 slipway_stages_running {}\n\
                 # HELP slipway_builds_total Builds created.\n\
                 # TYPE slipway_builds_total counter\n\
                 slipway_builds_total {}\n\
                 # HELP slipway_runners Runners registered.\n\
                 # TYPE slipway_runners gauge\n\
                 slipway_runners {}\n{proxy}{logs}",
                s.pending_stages,
                s.running_stages,
                s.builds_total,
                s.runners,
                logs = state.service_logs.metrics(),
            ),
        )
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// An error answer: `{"code": …, "message": …}` with a status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid token is needed: send `Authorization: Bearer <token>` (see `slipway up` output)",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!("{}: {}", self.code, self.message);
        }
        (
            self.status,
            axum::Json(ErrorBody {
                code: self.code,
                message: &self.message,
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}

impl From<crate::builds::BuildError> for ApiError {
    fn from(e: crate::builds::BuildError) -> ApiError {
        match e {
            crate::builds::BuildError::Store(e) => e.into(),
            crate::builds::BuildError::StillRunning(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            crate::builds::BuildError::Invalid(m) => ApiError::bad_request(m),
        }
    }
}

/// The stored token behind the request: its bearer token, else (reading only: GET and
/// HEAD) the UI session's. The cookie never changes anything through the API, so a page of
/// another origin cannot make the browser do so ([`guard`]).
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Token, ApiError> {
    if let Some(presented) = guard::bearer(&parts.headers) {
        return state
            .tokens
            .check(&state.store, &presented)
            .await
            .ok_or_else(ApiError::unauthorized);
    }
    if guard::cookie(&parts.headers, guard::COOKIE).is_none() {
        return Err(ApiError::unauthorized());
    }
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "{} {}: the UI's session only reads the API; a change needs \
                 `Authorization: Bearer <token>` (or the form on the UI's own page)",
                parts.method,
                parts.uri.path()
            ),
        ));
    }
    guard::session(state, &parts.headers)
        .await
        .map(|s| s.token)
        .ok_or_else(ApiError::unauthorized)
}

/// An authenticated API caller with the admin scope.
#[derive(Debug, Clone)]
pub struct Admin(pub Token);

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = authenticate(parts, state).await?;
        if token.scope != auth::SCOPE_ADMIN {
            return Err(ApiError::forbidden(format!(
                "token `{}` has scope `{}`; this needs an admin token",
                token.name, token.scope
            )));
        }
        Ok(Admin(token))
    }
}

/// Who speaks the runner protocol. The shared runner token only registers; registering
/// hands the runner a credential of its own ([`auth::runner_credential`]) that every later
/// call presents, so a runner can act only as itself. An admin token may do anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerCaller {
    Admin,
    /// The shared runner token.
    Registrar,
    /// A registered runner, by its own credential.
    Runner(i64),
}

impl RunnerCaller {
    /// Registering needs the runner token (or an admin's).
    pub fn may_register(self) -> Result<(), ApiError> {
        match self {
            RunnerCaller::Admin | RunnerCaller::Registrar => Ok(()),
            RunnerCaller::Runner(_) => Err(ApiError::forbidden(
                "a runner's own credential cannot register runners; use the runner token",
            )),
        }
    }

    /// Acting as runner `id` (polls, heartbeats, a stage's reports) needs that runner's
    /// credential (or an admin token).
    pub fn acts_as(self, id: i64) -> Result<(), ApiError> {
        match self {
            RunnerCaller::Admin => Ok(()),
            RunnerCaller::Runner(own) if own == id => Ok(()),
            RunnerCaller::Runner(own) => Err(ApiError::forbidden(format!(
                "this credential belongs to runner {own}, not runner {id}"
            ))),
            RunnerCaller::Registrar => Err(ApiError::forbidden(
                "the runner token only registers: a registered runner calls with the credential its registration returned",
            )),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for RunnerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // Runners send a bearer token; the UI's cookie is never a runner.
        let presented = guard::bearer(&parts.headers)
            .filter(|t| !t.is_empty())
            .ok_or_else(ApiError::unauthorized)?;
        if let Some((id, secret)) = auth::parse_runner_credential(&presented) {
            let runner = match state.cached_runner(id) {
                Some(runner) => Some(runner),
                None => state.store.runner(id).await?,
            };
            return match runner {
                Some(runner) if auth::matches_hash(secret, &runner.credential_hash) => {
                    Ok(RunnerCaller::Runner(id))
                }
                _ => Err(ApiError::unauthorized()),
            };
        }
        let token = state
            .tokens
            .check(&state.store, &presented)
            .await
            .ok_or_else(ApiError::unauthorized)?;
        match token.scope.as_str() {
            auth::SCOPE_ADMIN => Ok(RunnerCaller::Admin),
            auth::SCOPE_RUNNER => Ok(RunnerCaller::Registrar),
            _ => Err(ApiError::forbidden("this needs a runner token")),
        }
    }
}

/// A path under a repository: `owner/name[/group…]` then what is asked of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPath {
    pub repo: String,
    pub rest: Vec<String>,
}

/// Words that end a repository name in a path.
const KEYWORDS: &[&str] = &["builds", "secrets", "refs", "settings", "run"];

impl RepoPath {
    pub fn parse(path: &str) -> Option<RepoPath> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if segments.len() < 2 || segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        let mut end = 2;
        while end < segments.len() && !KEYWORDS.contains(&segments[end]) {
            end += 1;
        }
        Some(RepoPath {
            repo: segments[..end].join("/"),
            rest: segments[end..].iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    pub fn rest(&self) -> Vec<&str> {
        self.rest.iter().map(String::as_str).collect()
    }
}

/// A repository as the API shows it: never the status token; the webhook secret only
/// where asked for.
pub fn repo_json(
    repo: &crate::store::Repo,
    state: &AppState,
    with_secret: bool,
) -> serde_json::Value {
    let mut v = serde_json::to_value(repo).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("status_token");
        obj.insert(
            "has_status_token".into(),
            repo.status_token.is_some().into(),
        );
        if with_secret {
            match webhook_secret(state, repo) {
                Ok(plain) => {
                    obj.insert("webhook_secret".into(), plain.into());
                }
                Err(e) => {
                    tracing::error!("{}", e.message);
                    obj.remove("webhook_secret");
                }
            }
        } else {
            obj.remove("webhook_secret");
        }
        obj.insert("webhook_url".into(), webhook_url(state).into());
    }
    v
}

/// `repo`'s webhook secret in clear (the store holds it sealed, see [`crate::secrets`]),
/// for verifying a delivery and for showing it to an admin.
pub fn webhook_secret(state: &AppState, repo: &crate::store::Repo) -> Result<String, ApiError> {
    state
        .secrets
        .open_webhook_secret(&repo.name, &repo.webhook_secret)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!(
                    "{}: the stored webhook secret does not open ({e}); was secret.key \
                     replaced? Set a new secret with `slipway repo add` again",
                    repo.name
                ),
            )
        })
}

pub fn webhook_url(state: &AppState) -> String {
    format!("{}/hook", state.config.public_url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_paths_split_at_the_first_keyword() {
        let p = RepoPath::parse("team/app/builds/3/logs/1/clone").expect("path");
        assert_eq!(p.repo, "team/app");
        assert_eq!(p.rest(), ["builds", "3", "logs", "1", "clone"]);
        let p = RepoPath::parse("group/sub/app/secrets").expect("path");
        assert_eq!(p.repo, "group/sub/app");
        assert_eq!(p.rest(), ["secrets"]);
        assert_eq!(RepoPath::parse("team/app").expect("path").rest.len(), 0);
        assert!(RepoPath::parse("solo").is_none());
        assert!(RepoPath::parse("a//b").is_none());
    }
}
