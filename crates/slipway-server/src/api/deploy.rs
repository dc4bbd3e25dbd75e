//! Environments, their secrets, and the deployer's stacks and revisions over the API (an
//! admin token).
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/envs` · `POST {name, domain?, vars{}}` | environments |
//! | `GET /api/envs/{env}` · `DELETE` (refused while it has stacks) | one, with its secrets' names and stacks |
//! | `GET/POST /api/envs/{env}/secrets` `{name, value}` · `DELETE …/secrets/{name}` | its secrets (values never shown) |
//! | `GET/POST /api/envs/{env}/rules` `{repo, branch | image_tag, stack?, file?}` · `DELETE …/rules/{id}` | environment rules: each successful build of the branch deploys the repository's stack file at that commit, with the images the build pushed; or each push of a matching tag to the registry deploys the stack's current file with that image |
//! | `GET /api/stacks` | stacks with their latest revision |
//! | `POST /api/stacks/{env}/{stack}` `{compose, file?, rancher?, images{}, allow_bind_mounts?}` or `{repo, build? \| commit?, file?, images{}}` | a new revision (201); its rollout runs on |
//! | `GET /api/stacks/{env}/{stack}` · `DELETE` | the stack, its last revisions and containers · removed with its containers |
//! | `GET /api/stacks/{env}/{stack}/revisions[/{n}]` | the history · one revision with its rollout's steps |
//! | `POST /api/stacks/{env}/{stack}/rollback` `{to?}` | a new revision of an earlier one's file and images |
//! | `GET /api/stacks/{env}/{stack}/events` | SSE of the newest revision's rollout: its steps so far, then each new one and its status changes ([`super::live`]) |
//! | `POST /api/stacks/{env}/{stack}/webhook` | a new redeploy URL (the old one stops working) |
//! | `POST /hooks/deploy/{env}/{stack}/{token}[?tag=T&service=S]` (no other auth) | the current file again, tags resolved and pulled anew (202); a wrong token is 404 |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, ApiError};
use crate::app::AppState;
use crate::store::EnvRow;

/// The associated data an environment's secret is sealed with.
pub fn env_secret_aad(env: &str, name: &str) -> String {
    format!("env-secret:{env}:{name}")
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && name.len() <= 63
}

/// A variable or secret name stack files can interpolate (`${NAME}`).
fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Deserialize)]
pub struct AddEnv {
    pub name: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

pub async fn add_env(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Json(req): Json<AddEnv>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = req.name.trim();
    if !valid_env_name(name) {
        return Err(ApiError::bad_request(format!(
            "environment name `{name}`: lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit (at most 63)"
        )));
    }
    if let Some(bad) = req.vars.keys().find(|k| !valid_var_name(k)) {
        return Err(ApiError::bad_request(format!(
            "variable `{bad}`: letters, digits and `_`, not starting with a digit"
        )));
    }
    let domain = req
        .domain
        .map(|d| d.trim().trim_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty());
    if let Some(d) = &domain
        && !d
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    {
        return Err(ApiError::bad_request(format!(
            "domain `{d}` is not a host name"
        )));
    }
    let env = state
        .store
        .add_env(name, domain.as_deref(), &req.vars)
        .await?;
    tracing::info!("environment {} added", env.name);
    Ok((StatusCode::CREATED, Json(json!(env))))
}

pub async fn list_envs(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.store.envs().await?)))
}

pub async fn find_env(state: &AppState, name: &str) -> Result<EnvRow, ApiError> {
    state.store.env_by_name(name).await?.ok_or_else(|| {
        ApiError::not_found(format!("no environment `{name}` (see `slipway env ls`)"))
    })
}

pub async fn get_env(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let env = find_env(&state, &name).await?;
    let secrets = state.store.env_secrets(env.id).await?;
    let stacks = state.store.stacks(Some(env.id)).await?;
    let mut body = json!(env);
    if let Some(object) = body.as_object_mut() {
        object.insert("secrets".into(), json!(secrets));
        object.insert("stacks".into(), json!(stacks));
    }
    Ok(Json(body))
}

pub async fn delete_env(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let env = find_env(&state, &name).await?;
    state.store.delete_env(env.id, &env.name).await?;
    tracing::info!("environment {name} deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct EnvSecret {
    pub name: String,
    pub value: String,
}

pub async fn put_env_secret(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(env): Path<String>,
    Json(req): Json<EnvSecret>,
) -> Result<StatusCode, ApiError> {
    let env = find_env(&state, &env).await?;
    let name = req.name.trim();
    if !valid_var_name(name) {
        return Err(ApiError::bad_request(format!(
            "secret `{name}`: letters, digits and `_`, not starting with a digit (stack files use it as ${{{name}}})"
        )));
    }
    let sealed = state
        .secrets
        .seal(&req.value, &env_secret_aad(&env.name, name));
    state.store.put_env_secret(env.id, name, &sealed).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_env_secrets(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(env): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let env = find_env(&state, &env).await?;
    Ok(Json(json!(state.store.env_secrets(env.id).await?)))
}

pub async fn delete_env_secret(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path((env, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let env = find_env(&state, &env).await?;
    if state.store.delete_env_secret(env.id, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "environment {} has no secret `{name}`",
            env.name
        )))
    }
}

// ------------------------------------------------------------------------ stacks

impl From<crate::deploy::DeployError> for ApiError {
    fn from(e: crate::deploy::DeployError) -> ApiError {
        use crate::deploy::DeployError as E;
        match e {
            E::NotFound(m) => ApiError::not_found(m),
            E::Invalid(_) | E::Refused(_) => ApiError::bad_request(e.to_string()),
            E::Forbidden(m) => ApiError::new(
                StatusCode::FORBIDDEN,
                slipway_runner::protocol::DEPLOY_REFUSED,
                m,
            ),
            E::Busy(_) | E::NoProxy => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            E::Engine(_) => ApiError::new(StatusCode::BAD_GATEWAY, "engine", e.to_string()),
            E::Store(e) => e.into(),
        }
    }
}

pub async fn find_stack(
    state: &AppState,
    env: &str,
    stack: &str,
) -> Result<(EnvRow, crate::store::StackRow), ApiError> {
    let env = find_env(state, env).await?;
    let stack_row = state.store.stack(env.id, stack).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no stack `{}/{stack}` (see `slipway stack ls`)",
            env.name
        ))
    })?;
    Ok((env, stack_row))
}

/// The body of `POST /api/stacks/{env}/{stack}`: a stack file's text, or a repository
/// and which of its builds (or commits) to take it from.
#[derive(Debug, Deserialize)]
pub struct DeployBody {
    #[serde(flatten)]
    pub request: crate::deploy::DeployRequest,
    /// Take the stack file from this repository (`owner/name`) …
    #[serde(default)]
    pub repo: Option<String>,
    /// … at this build's commit, with the images it pushed;
    #[serde(default)]
    pub build: Option<i64>,
    /// … or at this commit, branch or tag (default: the repository's default branch).
    #[serde(default)]
    pub commit: Option<String>,
}

/// `POST /api/stacks/{env}/{stack}`: a new revision from a stack file; its rollout runs on.
pub async fn deploy_stack(
    State(state): State<Arc<AppState>>,
    Admin(token): Admin,
    Path((env, stack)): Path<(String, String)>,
    Json(body): Json<DeployBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !valid_env_name(&stack) {
        return Err(ApiError::bad_request(format!(
            "stack name `{stack}`: lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit"
        )));
    }
    let mut cause = format!("user:{}", token.name);
    let req = match &body.repo {
        None if body.request.compose.trim().is_empty() => {
            return Err(ApiError::bad_request(
                "give the stack file (`compose`) or a repository (`repo`, with `build` or `commit`)",
            ));
        }
        None => body.request,
        Some(name) => {
            let env_row = find_env(&state, &env).await?;
            let repo = state
                .store
                .repo_by_name(name)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no repository `{name}`")))?;
            let build = match body.build {
                Some(n) => Some(
                    state
                        .store
                        .build_by_number(repo.id, n)
                        .await?
                        .ok_or_else(|| ApiError::not_found(format!("{name} has no build #{n}")))?,
                ),
                None => None,
            };
            let commit = match (&build, &body.commit) {
                (Some(b), _) => b.commit.clone(),
                (None, Some(c)) => c.clone(),
                (None, None) => repo.default_branch.clone(),
            };
            let mut req = crate::deploy::from_repository(
                &state,
                &env_row,
                &repo,
                &commit,
                build.as_ref(),
                body.request.file.as_deref(),
            )
            .await?;
            req.images.extend(body.request.images);
            req.allow_bind_mounts |= body.request.allow_bind_mounts;
            if let Some(b) = &build {
                cause = format!("user:{} (build {name}#{})", token.name, b.number);
            }
            req
        }
    };
    let revision = crate::deploy::deploy(state.clone(), &env, &stack, req, cause).await?;
    Ok((StatusCode::CREATED, Json(json!(revision))))
}

pub async fn list_stacks(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for stack in state.store.stacks(None).await? {
        let latest = state.store.revisions(stack.id, 1).await?;
        out.push(json!({"stack": stack, "latest": latest.first()}));
    }
    Ok(Json(Value::Array(out)))
}

pub async fn get_stack(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path((env, stack)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (env, stack) = find_stack(&state, &env, &stack).await?;
    let revisions = state.store.revisions(stack.id, 10).await?;
    let containers = crate::deploy::containers(&state, &env.name, &stack.name).await?;
    let rollout = crate::deploy::rollout_asked(&state, stack.id);
    Ok(Json(
        json!({"stack": stack, "revisions": revisions, "containers": containers, "rollout": rollout}),
    ))
}

pub async fn stack_history(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path((env, stack)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, stack) = find_stack(&state, &env, &stack).await?;
    Ok(Json(json!(state.store.revisions(stack.id, 100).await?)))
}

pub async fn get_revision(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path((env, stack, number)): Path<(String, String, i64)>,
) -> Result<Json<Value>, ApiError> {
    let (_, stack) = find_stack(&state, &env, &stack).await?;
    let revision = state
        .store
        .revision(stack.id, number)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("stack {} has no revision {number}", stack.name))
        })?;
    let steps = state.store.rollout_steps(revision.id).await?;
    let mut body = json!(revision);
    if let Some(object) = body.as_object_mut() {
        object.insert("steps".into(), json!(steps));
    }
    Ok(Json(body))
}

/// `POST /api/stacks/{env}/{stack}/rollout/{command}`: pause, resume, promote or abort
/// the stack's running rollout; answers what has been asked of it so far.
pub async fn steer_rollout(
    State(state): State<Arc<AppState>>,
    Admin(token): Admin,
    Path((env, stack, command)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let command: slipway_deploy::rollout::Command =
        command.parse().map_err(ApiError::bad_request)?;
    tracing::info!("{env}/{stack}: {command:?} by {}", token.name);
    let asked = crate::deploy::steer(&state, &env, &stack, command).await?;
    Ok(Json(json!({"rollout": asked})))
}

#[derive(Debug, Deserialize, Default)]
pub struct RollbackRequest {
    /// The revision to go back to (default: the last one that succeeded before the
    /// current).
    #[serde(default)]
    pub to: Option<i64>,
}

/// A new revision with exactly an earlier one's file and pinned images (no pull).
pub async fn rollback_stack(
    State(state): State<Arc<AppState>>,
    Admin(token): Admin,
    Path((env, stack)): Path<(String, String)>,
    body: Option<Json<RollbackRequest>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let revision = rollback(&state, &env, &stack, req.to, &token.name).await?;
    Ok((StatusCode::CREATED, Json(json!(revision))))
}

/// Deploys revision `to` of `env/stack` again (default: the last that succeeded before
/// the current one), by `who`.
pub async fn rollback(
    state: &Arc<AppState>,
    env: &str,
    stack: &str,
    to: Option<i64>,
    who: &str,
) -> Result<crate::store::RevisionRow, ApiError> {
    let (env_row, stack_row) = find_stack(state, env, stack).await?;
    let revisions = state.store.revisions(stack_row.id, 1000).await?;
    let target = match to {
        Some(n) => revisions.iter().find(|r| r.number == n).ok_or_else(|| {
            ApiError::not_found(format!("stack {env}/{stack} has no revision {n}"))
        })?,
        None => revisions
            .iter()
            .find(|r| r.status == "succeeded" && Some(r.number) != stack_row.current)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "stack {env}/{stack} has no earlier revision that succeeded to go back to"
                ))
            })?,
    };
    tracing::info!(
        "{}/{}: rolling back to revision {} ({who})",
        env_row.name,
        stack_row.name,
        target.number
    );
    let request = crate::deploy::DeployRequest {
        compose: target.compose.clone(),
        file: None,
        rancher: target.rancher.clone(),
        images: target.images.clone(),
        allow_bind_mounts: true,
        pull_always: false,
        build: None,
        refs: Some(target.refs.clone()),
        overrides: Default::default(),
    };
    Ok(crate::deploy::deploy(
        state.clone(),
        &env_row.name,
        &stack_row.name,
        request,
        format!("rollback:{}", target.number),
    )
    .await?)
}

pub async fn delete_stack(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path((env, stack)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (env, stack) = find_stack(&state, &env, &stack).await?;
    let removed = crate::deploy::remove(&state, &env, &stack).await?;
    tracing::info!(
        "stack {}/{} removed ({removed} containers)",
        env.name,
        stack.name
    );
    Ok(Json(json!({"removed_containers": removed})))
}

/// `POST /api/stacks/{env}/{stack}/webhook`: a new redeploy URL (the old one stops working).
pub async fn make_webhook(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path((env, stack)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (env, stack) = find_stack(&state, &env, &stack).await?;
    let url = new_webhook(&state, &env, &stack).await?;
    Ok(Json(json!({"url": url})))
}

/// A new redeploy URL for `stack` (the old one stops working); its token is shown once.
pub async fn new_webhook(
    state: &AppState,
    env: &EnvRow,
    stack: &crate::store::StackRow,
) -> Result<String, ApiError> {
    let token = crate::auth::generate();
    state
        .store
        .set_stack_webhook(stack.id, Some(&crate::auth::hash(&token)))
        .await?;
    Ok(format!(
        "{}/hooks/deploy/{}/{}/{token}",
        state.config.public_url.trim_end_matches('/'),
        env.name,
        stack.name
    ))
}

/// `GET /api/stacks/{env}/{stack}/events`: the stack's newest rollout, live (SSE, see
/// [`super::live::stack_events`]).
pub async fn stack_events(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path((env, stack)): Path<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    let (_, stack) = find_stack(&state, &env, &stack).await?;
    super::live::stack_events(state, stack).await
}

#[derive(Debug, Deserialize, Default)]
pub struct RedeployQuery {
    /// With `tag`: the service whose image tag changes (default: the only one).
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
}

/// `repo:tag` or `repo` (with a registry port kept) with its tag replaced.
fn with_tag(image: &str, tag: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let base = match name[last_slash..].rfind(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    };
    format!("{base}:{tag}")
}

/// `POST /hooks/deploy/{env}/{stack}/{token}`: deploys the stack's current file again,
/// every tag resolved anew and pulled, so an image pushed under the same tag goes out
/// (`?tag=T[&service=S]` changes one service's tag). A wrong token is a 404 that changes
/// nothing.
pub async fn redeploy_hook(
    State(state): State<Arc<AppState>>,
    Path((env, stack, token)): Path<(String, String, String)>,
    axum::extract::Query(query): axum::extract::Query<RedeployQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let not_found = || ApiError::not_found("no such redeploy hook");
    let (env_row, stack_row) = find_stack(&state, &env, &stack)
        .await
        .map_err(|_| not_found())?;
    let Some(hash) = &stack_row.webhook_hash else {
        return Err(not_found());
    };
    if !crate::auth::matches_hash(&token, hash) {
        return Err(not_found());
    }
    let revisions = state.store.revisions(stack_row.id, 1000).await?;
    let base = revisions
        .iter()
        .find(|r| Some(r.number) == stack_row.current)
        .or_else(|| revisions.first())
        .ok_or_else(|| ApiError::bad_request("the stack has no revision to deploy again"))?;
    let mut images = base.refs.clone();
    if let Some(tag) = query.tag.as_deref().filter(|t| !t.is_empty()) {
        let service = match (&query.service, images.len()) {
            (Some(s), _) => s.clone(),
            (None, 1) => images.keys().next().cloned().unwrap_or_default(),
            (None, _) => {
                return Err(ApiError::bad_request(
                    "`tag` needs `service` when the stack has more than one",
                ));
            }
        };
        let image = images.get(&service).ok_or_else(|| {
            ApiError::bad_request(format!("the stack has no service `{service}`"))
        })?;
        let retagged = with_tag(image, tag);
        images.insert(service, retagged);
    }
    let request = crate::deploy::DeployRequest {
        compose: base.compose.clone(),
        file: None,
        rancher: base.rancher.clone(),
        images,
        allow_bind_mounts: true,
        pull_always: true,
        build: None,
        refs: None,
        overrides: Default::default(),
    };
    let revision = crate::deploy::deploy(
        state.clone(),
        &env_row.name,
        &stack_row.name,
        request,
        "webhook".to_owned(),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(json!(revision))))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tag_replaces_the_tag_and_keeps_the_registry_port() {
        assert_eq!(
            super::with_tag("127.0.0.1:5000/team/web:v1", "v2"),
            "127.0.0.1:5000/team/web:v2"
        );
        assert_eq!(
            super::with_tag("127.0.0.1:5000/team/web", "v2"),
            "127.0.0.1:5000/team/web:v2"
        );
        assert_eq!(super::with_tag("web@sha256:ab", "v3"), "web:v3");
    }
}

#[derive(Debug, Deserialize)]
pub struct AddRule {
    /// `owner/name`, or a glob (`team/*`): the git repository (with `branch`) or the
    /// registry repository (with `image_tag`).
    pub repo: String,
    /// A branch, or a glob.
    #[serde(default)]
    pub branch: Option<String>,
    /// A tag glob (`v*`): pushes of matching tags to the built-in registry deploy.
    #[serde(default)]
    pub image_tag: Option<String>,
    /// The stack it deploys (default: the repository's name).
    #[serde(default)]
    pub stack: Option<String>,
    /// The stack file in the repository (default: compose.yaml, …).
    #[serde(default)]
    pub file: Option<String>,
}

fn trimmed(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

pub async fn add_rule(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(env): Path<String>,
    Json(req): Json<AddRule>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let env = find_env(&state, &env).await?;
    let repo = req.repo.trim();
    let (branch, image_tag) = (
        trimmed(req.branch.as_deref()),
        trimmed(req.image_tag.as_deref()),
    );
    if repo.is_empty() || branch.is_some() == image_tag.is_some() {
        return Err(ApiError::bad_request(
            "a rule needs `repo` and one of `branch` (builds) or `image_tag` (registry pushes)",
        ));
    }
    let stack = trimmed(req.stack.as_deref())
        .unwrap_or_else(|| repo.rsplit('/').next().unwrap_or(repo).to_ascii_lowercase());
    if !valid_env_name(&stack) {
        return Err(ApiError::bad_request(format!(
            "stack name `{stack}`: lowercase letters, digits, `-`, `_` and `.` (give --stack)"
        )));
    }
    let rule = state
        .store
        .add_env_rule(
            env.id,
            &crate::store::EnvRuleRow {
                id: 0,
                env_id: env.id,
                repo: repo.to_owned(),
                branch: branch.clone().unwrap_or_default(),
                stack: stack.clone(),
                file: trimmed(req.file.as_deref()),
                image_tag: image_tag.clone(),
                created: 0,
            },
        )
        .await?;
    match &image_tag {
        Some(tag) => tracing::info!(
            "environment {}: each push of {repo}:{tag} to the registry deploys {stack}",
            env.name
        ),
        None => tracing::info!(
            "environment {}: each successful build of {repo} {} deploys {stack}",
            env.name,
            branch.unwrap_or_default()
        ),
    }
    Ok((StatusCode::CREATED, Json(json!(rule))))
}

pub async fn list_rules(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(env): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let env = find_env(&state, &env).await?;
    Ok(Json(json!(state.store.env_rules(Some(env.id)).await?)))
}

pub async fn delete_rule(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path((env, id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    let env = find_env(&state, &env).await?;
    if state.store.delete_env_rule(env.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "environment {} has no rule {id}",
            env.name
        )))
    }
}
