//! Environments and their secrets over the API (an admin token); the deployer's stacks and
//! revisions come next to them.
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/envs` · `POST {name, domain?, vars{}}` | environments |
//! | `GET /api/envs/{env}` · `DELETE` (refused while it has stacks) | one, with its secrets' names and stacks |
//! | `GET/POST /api/envs/{env}/secrets` `{name, value}` · `DELETE …/secrets/{name}` | its secrets (values never shown) |

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
