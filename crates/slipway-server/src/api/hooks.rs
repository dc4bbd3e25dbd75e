//! `POST /hook`: deliveries from GitHub, Gitea/Forgejo, GitLab and the generic trigger.
//!
//! Order (see [`crate::webhook`]): who sent it (400 if nobody we know), which repository
//! (400 malformed, 404 unknown), signature (401), delivery id already seen, or the same
//! body already built within the replay window whatever its delivery id (200 with the
//! existing build, nothing new: a replayed signed body builds nothing), what it asks (202 ignored with the reason, 400 malformed),
//! `[ci skip]` (202). Nothing is written to the database before a build is created, so
//! every refusal leaves it unchanged.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::app::AppState;
use crate::builds::{self, BuildRequest};
use crate::store::StoreError;
use crate::webhook::{self, Headers, Parsed, Provider, WebhookError};

struct HttpHeaders<'a>(&'a HeaderMap);

impl Headers for HttpHeaders<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

fn refused(e: WebhookError) -> ApiError {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let code = if status == StatusCode::UNAUTHORIZED {
        "bad_signature"
    } else {
        "bad_request"
    };
    ApiError::new(status, code, e.to_string())
}

pub async fn receive(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let h = HttpHeaders(&headers);
    let provider = Provider::detect(&h).ok_or_else(|| {
        ApiError::bad_request(
            "not a webhook Slipway knows: expected the event header of GitHub (X-GitHub-Event), Gitea/Forgejo (X-Gitea-Event), GitLab (X-Gitlab-Event) or an X-Slipway-Signature",
        )
    })?;
    let name = webhook::repository(provider, &body)
        .map_err(refused)?
        .ok_or_else(|| ApiError::bad_request("the delivery does not name a repository"))?;
    let repo = state.store.repo_by_name(&name).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no repository `{name}` here; add it with `slipway repo add {name} --clone-url URL`"
        ))
    })?;
    let secret = super::webhook_secret(&state, &repo)?;
    webhook::verify(provider, &h, &body, secret.as_bytes()).map_err(refused)?;

    let delivery_id = webhook::delivery_id(provider, &h);
    if let Some(id) = &delivery_id
        && let Some(build_id) = state.store.delivery_build(repo.id, id).await?
    {
        let number = state.store.build(build_id).await?.map(|b| b.number);
        return Ok((
            StatusCode::OK,
            Json(json!({"duplicate": true, "delivery_id": id, "build": number})),
        ));
    }

    // A captured signed body replayed under a new (or no) delivery id is still the same
    // body: remembered by digest, per repository, for the replay window.
    let body_digest = hex::encode(Sha256::digest(&body));
    if let Some(build_id) = state.store.body_build(repo.id, &body_digest).await? {
        return replayed(&state, build_id).await;
    }

    let hook = match webhook::parse(provider, &h, &body).map_err(refused)? {
        Parsed::Build(hook) => hook,
        Parsed::Ignored { reason } => {
            return Ok((StatusCode::ACCEPTED, Json(json!({"ignored": reason}))));
        }
    };
    if hook.skip_ci() {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"ignored": "the commit message asks to skip CI ([ci skip] / [skip ci])"})),
        ));
    }
    let request = BuildRequest {
        context: hook.context(),
        delivery_id: hook.delivery_id.clone(),
        body_digest: Some(body_digest),
        trigger: "@hook".to_owned(),
        fetched: false,
    };
    match builds::create(&state, &repo, request).await {
        Ok(build) => Ok((
            StatusCode::CREATED,
            Json(
                json!({"build": build.number, "status": build.status, "url": format!(
                    "{}/repos/{}/builds/{}",
                    state.config.public_url.trim_end_matches('/'), repo.name, build.number
                )}),
            ),
        )),
        // Two deliveries with the same id raced; the other one built.
        Err(builds::BuildError::Store(StoreError::DuplicateDelivery {
            delivery_id,
            build_id,
        })) => {
            let number = state.store.build(build_id).await?.map(|b| b.number);
            Ok((
                StatusCode::OK,
                Json(json!({"duplicate": true, "delivery_id": delivery_id, "build": number})),
            ))
        }
        Err(builds::BuildError::Store(StoreError::ReplayedBody { build_id })) => {
            replayed(&state, build_id).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The answer to a body already built: its build, nothing new.
async fn replayed(
    state: &AppState,
    build_id: i64,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let number = state.store.build(build_id).await?.map(|b| b.number);
    Ok((
        StatusCode::OK,
        Json(json!({
            "duplicate": true,
            "replayed_body": true,
            "build": number,
            "message": "this exact body was already delivered and built; a replay builds nothing (restart the build to run it again)",
        })),
    ))
}
