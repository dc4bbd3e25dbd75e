//! The web UI's deployer pages: environments with their stacks and rules (`/deploy`), and
//! a stack's page (`/deploy/{env}/{stack}`: its containers, its history with what each
//! revision ran, a rollback button per revision that succeeded, the last rollout's steps).
//! The work is [`super::deploy`]'s; this only reads forms.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::ApiError;
use super::pages::{PageForm, PageUser, error_page, field, render};
use crate::app::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/deploy", get(overview))
        .route("/deploy/{env}/{stack}", get(stack_page))
        .route("/deploy/{env}/{stack}/rollback", post(rollback))
}

async fn overview(State(state): State<Arc<AppState>>, PageUser(user): PageUser) -> Response {
    let result: Result<Value, ApiError> = async {
        let mut envs = Vec::new();
        for env in state.store.envs().await? {
            let mut stacks = Vec::new();
            for stack in state.store.stacks(Some(env.id)).await? {
                let latest = state.store.revisions(stack.id, 1).await?;
                stacks.push(json!({"stack": stack, "latest": latest.first()}));
            }
            let rules = state.store.env_rules(Some(env.id)).await?;
            envs.push(json!({"env": env, "stacks": stacks, "rules": rules}));
        }
        Ok(json!({"envs": envs}))
    }
    .await;
    match result {
        Ok(ctx) => render(&state, "deploy.html", "Deployments", Some(&user), ctx),
        Err(e) => error_page(&state, Some(&user), e),
    }
}

async fn stack_page(
    State(state): State<Arc<AppState>>,
    Path((env, stack)): Path<(String, String)>,
    PageUser(user): PageUser,
) -> Response {
    let result: Result<Value, ApiError> = async {
        let (env, stack) = super::deploy::find_stack(&state, &env, &stack).await?;
        let revisions = state.store.revisions(stack.id, 20).await?;
        let steps = match revisions.first() {
            Some(r) => state.store.rollout_steps(r.id).await?,
            None => Vec::new(),
        };
        // The engine may be away: the page still shows the history.
        let (containers, engine_error) =
            match crate::deploy::containers(&state, &env.name, &stack.name).await {
                Ok(c) => (c, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
        Ok(
            json!({"env": env, "stack": stack, "revisions": revisions, "steps": steps,
            "containers": containers, "engine_error": engine_error}),
        )
    }
    .await;
    match result {
        Ok(ctx) => render(&state, "stack.html", "Stack", Some(&user), ctx),
        Err(e) => error_page(&state, Some(&user), e),
    }
}

async fn rollback(
    State(state): State<Arc<AppState>>,
    Path((env, stack)): Path<(String, String)>,
    PageForm { user, form }: PageForm,
) -> Response {
    let to = field(&form, "to").and_then(|t| t.parse::<i64>().ok());
    match super::deploy::rollback(&state, &env, &stack, to, &user.token.name).await {
        Ok(_) => Redirect::to(&format!("/deploy/{env}/{stack}")).into_response(),
        Err(e) => error_page(&state, Some(&user), e),
    }
}
