//! The web UI's notifications page: channels (add, send a test, delete) and the delivery
//! log with every attempt. The work is [`super::notify`]'s; this only reads forms.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::ApiError;
use super::notify::{self as api, AddChannel};
use super::pages::{PageForm, PageUser, error_page, field, parse_params, render};
use crate::app::AppState;
use crate::store::Session;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/notify", get(page).post(add))
        .route("/notify/{name}/test", post(test))
        .route("/notify/{name}/delete", post(delete))
}

async fn context(state: &AppState, flash: Option<String>) -> Result<Value, ApiError> {
    let channels: Vec<Value> = state
        .store
        .channels()
        .await?
        .iter()
        .map(|row| api::channel_json(state, row))
        .collect();
    let deliveries = api::deliveries(state, None, 50).await?;
    let kinds: Vec<Value> = slipway_notify::Kind::ALL
        .iter()
        .map(|kind| {
            let settings: Vec<Value> = slipway_notify::settings::specs(*kind)
                .iter()
                .map(|s| json!({"name": s.name, "secret": s.secret, "required": s.required, "help": s.help}))
                .collect();
            json!({"name": kind.as_str(), "settings": settings})
        })
        .collect();
    Ok(json!({"channels": channels, "deliveries": deliveries, "kinds": kinds, "flash": flash}))
}

async fn show(state: &AppState, user: &Session, flash: Option<String>) -> Response {
    match context(state, flash).await {
        Ok(ctx) => render(state, "notify.html", "Notifications", Some(user), ctx),
        Err(e) => error_page(state, Some(user), e),
    }
}

async fn page(State(state): State<Arc<AppState>>, PageUser(user): PageUser) -> Response {
    show(&state, &user, None).await
}

async fn add(State(state): State<Arc<AppState>>, PageForm { user, form }: PageForm) -> Response {
    let result: Result<Option<String>, ApiError> = async {
        let mut secrets = parse_params(form.get("secrets").map_or("", String::as_str))?;
        if let Some(url) = field(&form, "url") {
            secrets.insert("url".into(), url);
        }
        let req = AddChannel {
            name: field(&form, "name").unwrap_or_default(),
            kind: field(&form, "kind").unwrap_or_default(),
            api_base: field(&form, "api_base"),
            settings: parse_params(form.get("settings").map_or("", String::as_str))?,
            secrets,
            template: field(&form, "template"),
            repo: field(&form, "repo"),
            branch: field(&form, "branch"),
            environment: field(&form, "environment"),
            events: field(&form, "events")
                .unwrap_or_default()
                .split(',')
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect(),
        };
        let (_, template_error) = api::create_channel(&state, req).await?;
        Ok(template_error)
    }
    .await;
    match result {
        Ok(None) => Redirect::to("/notify").into_response(),
        Ok(Some(error)) => {
            let flash = format!(
                "Channel added, but its template does not render ({error}): the default message is sent until it is fixed."
            );
            show(&state, &user, Some(flash)).await
        }
        Err(e) => error_page(&state, Some(&user), e),
    }
}

async fn test(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    PageForm { user, .. }: PageForm,
) -> Response {
    match api::send_test(&state, &name).await {
        Ok(result) => {
            let mut flash = if result["ok"] == true {
                format!("{name}: delivered ({} ms)", result["latency_ms"])
            } else {
                format!(
                    "{name}: not delivered: {}",
                    result["answer"].as_str().unwrap_or_default()
                )
            };
            if let Some(error) = result["template_error"].as_str() {
                flash.push_str(&format!(
                    " · template error: {error} (the default message was sent)"
                ));
            }
            show(&state, &user, Some(flash)).await
        }
        Err(e) => error_page(&state, Some(&user), e),
    }
}

async fn delete(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    PageForm { user, .. }: PageForm,
) -> Response {
    match api::remove_channel(&state, &name).await {
        Ok(()) => Redirect::to("/notify").into_response(),
        Err(e) => error_page(&state, Some(&user), e),
    }
}
