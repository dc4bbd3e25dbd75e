//! The REST API under `/api/` (JSON; an admin token). Reads take the bearer token or the
//! UI's session cookie; a POST, PATCH or DELETE only a bearer token, and a body only as
//! `application/json` (see [`super::guard`]).
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/repos` | repositories |
//! | `POST /api/repos` `{name, clone_url, provider?, config_path?, default_branch?, …}` | the repository with `webhook_url` and `webhook_secret` |
//! | `GET /api/repos/{repo}` · `PATCH` settings ([`RepoSettings`]) · `DELETE` is refused (not yet) | |
//! | `GET /api/repos/{repo}/builds?limit=&before=` | builds, newest first |
//! | `POST /api/repos/{repo}/builds` `{branch|tag|commit, params}` | a manual build |
//! | `GET /api/repos/{repo}/builds/{n}` | the build with its stages and steps |
//! | `POST /api/repos/{repo}/builds/{n}/restart` · `/cancel` · `/promote {target, params}` | |
//! | `GET /api/repos/{repo}/builds/{n}/events` | SSE of state changes ([`super::live`]) |
//! | `GET /api/repos/{repo}/builds/{n}/logs/{stage}/{step}[?attempt=]` | the raw log |
//! | `GET /api/repos/{repo}/builds/{n}/logs/{stage}/{step}/stream` | SSE: stored lines, then live |
//! | `GET /api/repos/{repo}/refs` | branches and tags |
//! | `GET/POST /api/repos/{repo}/secrets` · `DELETE …/secrets/{name}` | secrets (values never shown) |
//! | `GET /api/runners` | runners |
//! | `POST /api/registry/gc {dry_run, rules: [{repositories, tags, keep_last, untagged_older_than_secs}], blob_grace_secs}` | registry garbage collection and retention, online, never collecting an image of the deployer's last 10 revisions of a stack; the report |
//! | `GET /api/tokens` · `POST {name, scope}` · `DELETE /api/tokens/{id}` | API tokens (`admin`, `runner`, `robot:<namespace>`, `paths:<pattern>,…`); the secret only in the POST answer |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, ApiError, RepoPath, repo_json};
use crate::app::AppState;
use crate::builds::{self, ManualRef};
use crate::logstore::LogKey;
use crate::store::{Build, NewRepo, Repo};
use crate::webhook::Provider;

pub async fn list_repos(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let repos = state.store.repos().await?;
    Ok(Json(Value::Array(
        repos.iter().map(|r| repo_json(r, &state, false)).collect(),
    )))
}

/// The body of `POST /api/repos` (also the UI form and `slipway repo add`).
#[derive(Debug, Deserialize)]
pub struct AddRepo {
    pub name: String,
    pub clone_url: String,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub config_path: Option<String>,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub trusted: bool,
    #[serde(default)]
    pub auto_cancel: bool,
    #[serde(default)]
    pub max_running: i64,
    #[serde(default)]
    pub status_url: Option<String>,
    #[serde(default)]
    pub status_token: Option<String>,
    /// A given webhook secret (else a random one).
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

pub async fn add_repo(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Json(req): Json<AddRepo>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let repo = create_repo(&state, req).await?;
    Ok((StatusCode::CREATED, Json(repo_json(&repo, &state, true))))
}

/// Checks and stores a new repository.
pub async fn create_repo(state: &AppState, req: AddRepo) -> Result<Repo, ApiError> {
    let name = req.name.trim().trim_matches('/').to_owned();
    if RepoPath::parse(&name).is_none_or(|p| !p.rest.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "repository name `{name}` must be `owner/name` (GitLab groups: `group/sub/name`), without the words builds, secrets, refs, settings or run"
        )));
    }
    if req.clone_url.trim().is_empty() {
        return Err(ApiError::bad_request("clone_url is needed"));
    }
    let provider = match req.provider.as_deref().map(str::trim) {
        None | Some("") => Provider::GitHub,
        Some(p) => Provider::parse(p).ok_or_else(|| {
            ApiError::bad_request(format!(
                "provider `{p}` is not one of github, gitea, gitlab, generic"
            ))
        })?,
    };
    let status_token = req
        .status_token
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_owned());
    let new = NewRepo {
        name: name.clone(),
        provider: provider.as_str().to_owned(),
        clone_url: req.clone_url.trim().to_owned(),
        config_path: req.config_path.filter(|p| !p.trim().is_empty()),
        webhook_secret: state.secrets.seal_webhook_secret(
            &name,
            &req.webhook_secret
                .filter(|s| s.len() >= 16)
                .unwrap_or_else(crate::auth::generate),
        ),
        default_branch: req
            .default_branch
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| "main".to_owned()),
        trusted: req.trusted,
        auto_cancel: req.auto_cancel,
        max_running: req.max_running.max(0),
        status_url: req.status_url.filter(|u| !u.trim().is_empty()),
        status_token: None,
    };
    let mut repo = state.store.create_repo(&new).await?;
    if let Some(token) = status_token {
        repo.status_token = Some(
            state
                .secrets
                .seal(&token, &builds::status_token_aad(repo.id)),
        );
        state.store.update_repo(&repo).await?;
    }
    tracing::info!("repository {} added ({})", repo.name, repo.provider);
    Ok(repo)
}

pub async fn list_runners(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        serde_json::to_value(state.store.runners().await?).unwrap_or_default(),
    ))
}

/// `GET /api/proxy/routes`: the edge proxy's routes, backends and TLS (404 when this
/// server runs none).
pub async fn proxy_routes(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<slipway_proxy::ProxyStatus>, ApiError> {
    match &state.config.edge {
        Some(edge) => Ok(Json(edge.status())),
        None => Err(ApiError::not_found(
            "this server runs no proxy (it was started with --no-proxy, or as `slipway server`)",
        )),
    }
}

pub async fn find_repo(state: &AppState, name: &str) -> Result<Repo, ApiError> {
    state
        .store
        .repo_by_name(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no repository `{name}`")))
}

pub async fn find_build(state: &AppState, repo: &Repo, number: &str) -> Result<Build, ApiError> {
    let n: i64 = number
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{number}` is not a build number")))?;
    state
        .store
        .build_by_number(repo.id, n)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{} has no build #{n}", repo.name)))
}

/// A build as the API shows it: the stored fields, plus `ref` (Drone's name for
/// `reference`).
pub fn build_value(build: &Build) -> Value {
    let mut v = serde_json::to_value(build).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("ref".into(), build.reference.clone().into());
    }
    v
}

/// The build with its stages (each with its steps) and artifacts.
pub async fn build_json(state: &AppState, build: &Build) -> Result<Value, ApiError> {
    let stages = state.store.stage_states(build.id).await?;
    let steps = state.store.steps_of_build(build.id).await?;
    let artifacts = state.store.artifacts(build.id).await?;
    let stages: Vec<Value> = stages
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.remove("plan");
                let own: Vec<&crate::store::Step> =
                    steps.iter().filter(|st| st.stage_id == s.id).collect();
                obj.insert(
                    "steps".into(),
                    serde_json::to_value(own).unwrap_or_default(),
                );
            }
            v
        })
        .collect();
    let mut v = build_value(build);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("stages".into(), Value::Array(stages));
        obj.insert(
            "artifacts".into(),
            serde_json::to_value(artifacts).unwrap_or_default(),
        );
    }
    Ok(v)
}

#[derive(Debug, Deserialize, Default)]
pub struct ListQuery {
    pub limit: Option<i64>,
    pub before: Option<i64>,
    pub attempt: Option<i64>,
}

pub async fn repo_get(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(path): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let path = RepoPath::parse(&path).ok_or_else(|| ApiError::not_found("no such path"))?;
    let repo = find_repo(&state, &path.repo).await?;
    match path.rest().as_slice() {
        [] => Ok(Json(repo_json(&repo, &state, true)).into_response()),
        ["builds"] => {
            let limit = query.limit.unwrap_or(25).clamp(1, 200);
            let builds = state.store.builds(repo.id, limit, query.before).await?;
            let list: Vec<Value> = builds.iter().map(build_value).collect();
            Ok(Json(Value::Array(list)).into_response())
        }
        ["builds", n] => {
            let build = find_build(&state, &repo, n).await?;
            Ok(Json(build_json(&state, &build).await?).into_response())
        }
        ["builds", n, "events"] => {
            let build = find_build(&state, &repo, n).await?;
            Ok(super::live::build_events(state.clone(), build).await?)
        }
        // The router has percent-decoded the path, so a step name with `/` (sent as `%2F`)
        // spans several segments: the step is everything after the stage number, less a
        // trailing `stream`.
        ["builds", n, "logs", stage, step @ .., "stream"] if !step.is_empty() => {
            let build = find_build(&state, &repo, n).await?;
            let key = log_key(&state, &build, stage, &step.join("/"), query.attempt).await?;
            super::live::log_stream(state.clone(), key).await
        }
        ["builds", n, "logs", stage, step @ ..] if !step.is_empty() => {
            let build = find_build(&state, &repo, n).await?;
            let key = log_key(&state, &build, stage, &step.join("/"), query.attempt).await?;
            raw_log(&state, &key).await
        }
        ["refs"] => {
            state
                .mirrors
                .fetch(repo.id, &repo.clone_url, &[])
                .await
                .map_err(|e| ApiError::bad_request(format!("fetching {}: {e}", repo.clone_url)))?;
            let refs = state
                .mirrors
                .refs(repo.id)
                .await
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok(Json(json!({"branches": refs.branches, "tags": refs.tags})).into_response())
        }
        ["secrets"] => Ok(Json(Value::Array(secret_list(&state, &repo).await?)).into_response()),
        _ => Err(ApiError::not_found("no such path")),
    }
}

/// The log of one step: `stage` is the stage's number in the build, `step` its name;
/// `attempt` defaults to the stage's current one.
pub async fn log_key(
    state: &AppState,
    build: &Build,
    stage: &str,
    step: &str,
    attempt: Option<i64>,
) -> Result<LogKey, ApiError> {
    let number: i64 = stage
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{stage}` is not a stage number")))?;
    let stage = state
        .store
        .stage_states(build.id)
        .await?
        .into_iter()
        .find(|s| s.number == number)
        .ok_or_else(|| {
            ApiError::not_found(format!("build #{} has no stage {number}", build.number))
        })?;
    let step = step.to_owned();
    Ok(LogKey {
        build_id: build.id,
        stage_id: stage.id,
        attempt: attempt.unwrap_or(stage.attempt.max(1)),
        step,
    })
}

async fn raw_log(state: &AppState, key: &LogKey) -> Result<Response, ApiError> {
    match state.logs.raw(key).await {
        Ok(bytes) => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
        }
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}

/// The body of `POST …/builds` (manual run).
#[derive(Debug, Deserialize, Default)]
pub struct RunRequest {
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub commit: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

impl RunRequest {
    pub fn target(&self, repo: &Repo) -> Result<ManualRef, ApiError> {
        let given = |v: &Option<String>| {
            v.as_ref()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        match (given(&self.branch), given(&self.tag), given(&self.commit)) {
            (Some(b), None, None) => Ok(ManualRef::Branch(b)),
            (None, Some(t), None) => Ok(ManualRef::Tag(t)),
            (None, None, Some(c)) => Ok(ManualRef::Commit(c)),
            (None, None, None) => Ok(ManualRef::Branch(repo.default_branch.clone())),
            _ => Err(ApiError::bad_request(
                "give one of branch, tag or commit, not several",
            )),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct PromoteRequest {
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct SecretRequest {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub allow_pull_request: bool,
}

fn json_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the JSON body: {e}")))
}

pub async fn repo_post(
    State(state): State<Arc<AppState>>,
    Admin(token): Admin,
    Path(path): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = RepoPath::parse(&path).ok_or_else(|| ApiError::not_found("no such path"))?;
    let repo = find_repo(&state, &path.repo).await?;
    let user = token.name.clone();
    match path.rest().as_slice() {
        ["builds"] => {
            let req: RunRequest = json_body(&body)?;
            let target = req.target(&repo)?;
            let build = builds::run_manual(&state, &repo, target, req.params, &user).await?;
            Ok((StatusCode::CREATED, Json(build_json(&state, &build).await?)).into_response())
        }
        ["builds", n, "restart"] => {
            let build = find_build(&state, &repo, n).await?;
            let new = builds::restart(&state, &repo, &build, &user).await?;
            Ok((StatusCode::CREATED, Json(build_json(&state, &new).await?)).into_response())
        }
        ["builds", n, "cancel"] => {
            let build = find_build(&state, &repo, n).await?;
            builds::cancel(&state, &build).await?;
            let build = find_build(&state, &repo, n).await?;
            Ok(Json(build_json(&state, &build).await?).into_response())
        }
        ["builds", n, "promote"] => {
            let build = find_build(&state, &repo, n).await?;
            let req: PromoteRequest = json_body(&body)?;
            let new =
                builds::promote(&state, &repo, &build, &req.target, req.params, &user).await?;
            Ok((StatusCode::CREATED, Json(build_json(&state, &new).await?)).into_response())
        }
        ["secrets"] => {
            let req: SecretRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("the JSON body: {e}")))?;
            put_secret(&state, &repo, &req).await?;
            Ok((StatusCode::CREATED, Json(json!({"name": req.name}))).into_response())
        }
        _ => Err(ApiError::not_found("no such path")),
    }
}

/// A repository's secrets without their values.
pub async fn secret_list(state: &AppState, repo: &Repo) -> Result<Vec<Value>, ApiError> {
    Ok(state
        .store
        .secrets(repo.id)
        .await?
        .into_iter()
        .map(|s| {
            json!({"name": s.name, "allow_pull_request": s.allow_pull_request,
                   "created": s.created, "updated": s.updated})
        })
        .collect())
}

/// Checks a secret's name and stores its value sealed.
pub async fn put_secret(
    state: &AppState,
    repo: &Repo,
    req: &SecretRequest,
) -> Result<(), ApiError> {
    let name = req.name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(ApiError::bad_request(format!(
            "secret name `{name}` may only hold letters, digits, `_`, `-` and `.`"
        )));
    }
    let sealed = state
        .secrets
        .seal(&req.value, &builds::secret_aad(repo.id, name));
    state
        .store
        .put_secret(
            repo.id,
            name,
            &sealed,
            req.allow_pull_request,
            crate::now_ms(),
        )
        .await?;
    Ok(())
}

/// The body of `PATCH /api/repos/{repo}`: only the fields given change.
#[derive(Debug, Deserialize, Default)]
pub struct RepoSettings {
    pub clone_url: Option<String>,
    pub config_path: Option<String>,
    pub default_branch: Option<String>,
    pub trusted: Option<bool>,
    pub auto_cancel: Option<bool>,
    pub max_running: Option<i64>,
    pub status_url: Option<String>,
    pub status_token: Option<String>,
    /// Registry path patterns (`team/shared-*`) a pipeline's token may push to besides the
    /// repository's own path; replaces the list (`[]` clears it).
    pub registry_paths: Option<Vec<String>>,
}

/// Applies settings; a blank status token keeps the old one. Nothing changes if a setting
/// is invalid.
pub async fn update_settings(
    state: &AppState,
    mut repo: Repo,
    s: RepoSettings,
) -> Result<Repo, ApiError> {
    if let Some(v) = s.clone_url.filter(|v| !v.trim().is_empty()) {
        repo.clone_url = v.trim().to_owned();
    }
    if let Some(v) = s.config_path {
        repo.config_path = Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    }
    if let Some(v) = s.default_branch.filter(|v| !v.trim().is_empty()) {
        repo.default_branch = v.trim().to_owned();
    }
    if let Some(v) = &s.registry_paths {
        repo.registry_paths = crate::auth::registry_paths(v).map_err(ApiError::bad_request)?;
    }
    if let Some(v) = s.trusted {
        repo.trusted = v;
    }
    if let Some(v) = s.auto_cancel {
        repo.auto_cancel = v;
    }
    if let Some(v) = s.max_running {
        repo.max_running = v.max(0);
    }
    if let Some(v) = s.status_url {
        repo.status_url = Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    }
    if let Some(v) = s.status_token.filter(|v| !v.trim().is_empty()) {
        repo.status_token = Some(
            state
                .secrets
                .seal(v.trim(), &builds::status_token_aad(repo.id)),
        );
    }
    state.store.update_repo(&repo).await?;
    Ok(repo)
}

pub async fn repo_patch(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(path): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let path = RepoPath::parse(&path).ok_or_else(|| ApiError::not_found("no such path"))?;
    if !path.rest.is_empty() {
        return Err(ApiError::not_found("no such path"));
    }
    let repo = find_repo(&state, &path.repo).await?;
    let settings: RepoSettings = json_body(&body)?;
    let repo = update_settings(&state, repo, settings).await?;
    Ok(Json(repo_json(&repo, &state, true)))
}

pub async fn repo_delete(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(path): Path<String>,
) -> Result<StatusCode, ApiError> {
    let path = RepoPath::parse(&path).ok_or_else(|| ApiError::not_found("no such path"))?;
    let repo = find_repo(&state, &path.repo).await?;
    match path.rest().as_slice() {
        ["secrets", name] => {
            if state.store.delete_secret(repo.id, name).await? {
                Ok(StatusCode::NO_CONTENT)
            } else {
                Err(ApiError::not_found(format!(
                    "{} has no secret `{name}`",
                    repo.name
                )))
            }
        }
        _ => Err(ApiError::not_found("no such path")),
    }
}

/// The body of `POST /api/tokens`.
#[derive(Debug, Deserialize)]
pub struct AddToken {
    pub name: String,
    /// `admin`, `runner`, `robot:<namespace>` or `paths:<pattern>,…`.
    pub scope: String,
}

pub async fn add_token(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Json(req): Json<AddToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = req.name.trim();
    if name.is_empty() {
        return Err(ApiError::bad_request("a token needs a name"));
    }
    if !crate::auth::valid_scope(&req.scope) {
        return Err(ApiError::bad_request(format!(
            "scope `{}` is not one of admin, runner, robot:<namespace>, \
             paths:<pattern>[,<pattern>…] (patterns like `team/app` or `team/shared-*`)",
            req.scope
        )));
    }
    let secret = crate::auth::generate();
    let token = state
        .store
        .create_token(
            name,
            &crate::auth::hash(&secret),
            &req.scope,
            crate::now_ms(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": token.id, "name": token.name, "scope": token.scope, "token": secret})),
    ))
}

pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let tokens: Vec<Value> = state
        .store
        .tokens()
        .await?
        .into_iter()
        .map(|t| json!({"id": t.id, "name": t.name, "scope": t.scope, "created": t.created}))
        .collect();
    Ok(Json(Value::Array(tokens)))
}

pub async fn delete_token(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let deleted = state.store.delete_token(id).await?;
    state.tokens.clear();
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no token {id}")))
    }
}

/// Revisions of each stack whose images the registry keeps (a rollback to any of them
/// needs no push).
pub const KEPT_REVISIONS: i64 = 10;

/// The `(repository, digest)`s of `images` (`HOST/REPO@DIGEST`) that are in this server's
/// registry (`host`); others (another registry, a local image id) are not its to keep.
pub fn registry_roots(host: &str, images: &[String]) -> Vec<(String, slipway_registry::Digest)> {
    images
        .iter()
        .filter_map(|image| {
            let (name, digest) = image.split_once('@')?;
            let repo = name.strip_prefix(host)?.strip_prefix('/')?;
            Some((repo.to_owned(), digest.parse().ok()?))
        })
        .collect()
}

/// One retention rule of `POST /api/registry/gc`.
#[derive(Debug, Deserialize)]
pub struct GcRule {
    /// `*`, `team/*` or a repository name.
    #[serde(default = "star")]
    pub repositories: String,
    /// Tags `keep_last` counts: `*` and `?` wildcards.
    #[serde(default = "star")]
    pub tags: String,
    pub keep_last: Option<usize>,
    pub untagged_older_than_secs: Option<u64>,
}

fn star() -> String {
    "*".to_owned()
}

/// The body of `POST /api/registry/gc`.
#[derive(Debug, Deserialize, Default)]
pub struct GcRequest {
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub rules: Vec<GcRule>,
    pub blob_grace_secs: Option<u64>,
}

pub async fn registry_gc(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: GcRequest = json_body(&body)?;
    let mut options = slipway_registry::GcOptions {
        dry_run: req.dry_run,
        ..Default::default()
    };
    if let Some(secs) = req.blob_grace_secs {
        options.blob_grace = std::time::Duration::from_secs(secs);
    }
    // What the deployer's kept revisions run is never collected.
    options.roots = registry_roots(&state.host, &state.store.kept_images(KEPT_REVISIONS).await?);
    for rule in req.rules {
        options.retention.push(slipway_registry::RetentionRule {
            repositories: slipway_registry::RepoPattern::parse(&rule.repositories),
            tag_pattern: rule.tags,
            keep_last: rule.keep_last,
            untagged_older_than: rule
                .untagged_older_than_secs
                .map(std::time::Duration::from_secs),
        });
    }
    let report =
        state.registry.collect_garbage(options).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
    Ok(Json(json!({
        "dry_run": report.dry_run,
        "tags": report.tags.iter().map(|(r, t)| format!("{r}:{t}")).collect::<Vec<_>>(),
        "manifests": report.manifests.iter().map(|(r, d)| format!("{r}@{d}")).collect::<Vec<_>>(),
        "blobs": report.blobs.iter().map(|(d, size)| json!({"digest": d.to_string(), "size": size})).collect::<Vec<_>>(),
        "uploads": report.uploads,
        "freed_bytes": report.freed_bytes,
    })))
}

#[cfg(test)]
mod registry_roots_tests {
    #[test]
    fn only_images_of_this_registry_are_roots() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let roots = super::registry_roots(
            "127.0.0.1:8080",
            &[
                format!("127.0.0.1:8080/team/app@{digest}"),
                format!("registry.example.com/team/app@{digest}"),
                "sha256:0123".to_owned(),
                "127.0.0.1:8080/team/app:latest".to_owned(),
            ],
        );
        assert_eq!(roots.len(), 1);
        assert_eq!(roots[0].0, "team/app");
        assert_eq!(roots[0].1.to_string(), digest);
    }
}
