//! Notification channels and their deliveries over the API (an admin token).
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/notify/channels` | channels (credentials by name only) |
//! | `POST /api/notify/channels` `{name, kind, api_base?, settings{}, secrets{}, template?, repo?, branch?, environment?, events[]}` | the channel, and `template_error` if its template does not render |
//! | `GET /api/notify/channels/{name}` · `DELETE` | one channel (with its deliveries) |
//! | `POST /api/notify/channels/{name}/test` | one message sent now: `{ok, status, answer, template_error}` |
//! | `GET /api/notify/deliveries?channel=&limit=` | deliveries, newest first, each with its attempts |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use slipway_notify::Kind;
use slipway_notify::rules::{Event, parse_events};
use slipway_notify::settings::Settings;
use slipway_notify::template::Context;

use super::{Admin, ApiError};
use crate::app::AppState;
use crate::notify::{self, ChannelError};
use crate::store::ChannelRow;

impl From<ChannelError> for ApiError {
    fn from(e: ChannelError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

/// The body of `POST /api/notify/channels` (also `slipway notify add`).
#[derive(Debug, Deserialize)]
pub struct AddChannel {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub api_base: Option<String>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub events: Vec<String>,
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// A channel as the API shows it: its credentials' names, never their values.
pub fn channel_json(state: &AppState, row: &ChannelRow) -> Value {
    let mut row = row.clone();
    row.secret_names = if row.secrets.is_empty() {
        Vec::new()
    } else {
        match state
            .secrets
            .open(&row.secrets, &notify::secrets_aad(&row.name))
            .ok()
            .and_then(|text| serde_json::from_str::<BTreeMap<String, String>>(&text).ok())
        {
            Some(map) => map.into_keys().collect(),
            None => vec!["(sealed with another key)".to_owned()],
        }
    };
    serde_json::to_value(row).unwrap_or_default()
}

/// A build (or, with none yet, an example) to render a channel's messages with.
async fn sample_context(state: &AppState, row: &ChannelRow) -> Result<Context, ApiError> {
    let rule = notify::rule_of(row);
    for (build, _) in state.store.recent_builds(50).await? {
        if !build.status.is_done() {
            continue;
        }
        let Some(repo) = state.store.repo(build.repo_id).await? else {
            continue;
        };
        let context = notify::build_context(state, &build, &repo);
        let matches = Event::for_build(build.status.as_str(), None)
            .iter()
            .any(|e| rule.matches(*e, &context));
        if matches || rule.repo.is_none() {
            return Ok(context);
        }
    }
    let mut context = Context::default();
    context.repo.owner = "example".into();
    context.repo.name = "app".into();
    context.repo.full_name = "example/app".into();
    context.build.number = 1;
    context.build.status = "success".into();
    context.build.event = "push".into();
    context.build.branch = "main".into();
    context.build.commit = "0123456789abcdef0123456789abcdef01234567".into();
    context.build.message = "A test message from Slipway".into();
    context.build.author = "slipway".into();
    context.build.link = state.config.public_url.clone();
    Ok(context)
}

pub async fn add_channel(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Json(req): Json<AddChannel>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (row, template_error) = create_channel(&state, req).await?;
    let mut body = channel_json(&state, &row);
    if let (Some(object), Some(error)) = (body.as_object_mut(), template_error) {
        object.insert("template_error".into(), error.into());
    }
    Ok((StatusCode::CREATED, Json(body)))
}

/// Checks, seals and stores a new channel and starts its worker; the channel, and its
/// template's error if it does not render (it is kept: the default message goes instead).
pub async fn create_channel(
    state: &AppState,
    req: AddChannel,
) -> Result<(ChannelRow, Option<String>), ApiError> {
    let name = req.name.trim().to_owned();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ApiError::bad_request(format!(
            "channel name `{name}`: letters, digits, `-`, `_` and `.` only"
        )));
    }
    let kind: Kind = req
        .kind
        .trim()
        .parse()
        .map_err(|e: slipway_notify::ConfigError| ApiError::bad_request(e.to_string()))?;
    let settings = Settings {
        plain: req.settings,
        secrets: req.secrets,
    };
    settings
        .check(kind)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let events = parse_events(&req.events).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let api_base = non_empty(req.api_base);
    if let Some(base) = &api_base
        && !(base.starts_with("http://") || base.starts_with("https://"))
    {
        return Err(ApiError::bad_request(format!(
            "api_base `{base}`: an http:// or https:// URL"
        )));
    }
    let secrets = if settings.secrets.is_empty() {
        String::new()
    } else {
        let text = serde_json::to_string(&settings.secrets).unwrap_or_default();
        state.secrets.seal(&text, &notify::secrets_aad(&name))
    };
    let new = ChannelRow {
        id: 0,
        name: name.clone(),
        kind: kind.as_str().to_owned(),
        api_base,
        settings: settings.plain,
        secrets,
        secret_names: Vec::new(),
        template: non_empty(req.template),
        repo: non_empty(req.repo),
        branch: non_empty(req.branch),
        environment: non_empty(req.environment),
        events: events.iter().map(|e| e.as_str().to_owned()).collect(),
        created: crate::now_ms(),
    };
    let row = state.store.add_channel(&new).await?;
    let channel = notify::open_channel(state, &row)?;
    state.notify.start_channel(row.id, channel);
    state.wake_notifications();
    tracing::info!("notification channel {} added ({})", row.name, row.kind);
    let context = sample_context(state, &row).await?;
    let (_, template_error) = notify::render(&row, &context, Event::BuildSuccess);
    Ok((row, template_error))
}

pub async fn list_channels(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let rows = state.store.channels().await?;
    Ok(Json(Value::Array(
        rows.iter().map(|r| channel_json(&state, r)).collect(),
    )))
}

async fn channel_named(state: &AppState, name: &str) -> Result<ChannelRow, ApiError> {
    state
        .store
        .channel_by_name(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no notification channel `{name}`")))
}

pub async fn get_channel(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = channel_named(&state, &name).await?;
    Ok(Json(channel_json(&state, &row)))
}

pub async fn delete_channel(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove_channel(&state, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops a channel's worker and deletes it with its deliveries.
pub async fn remove_channel(state: &AppState, name: &str) -> Result<(), ApiError> {
    let row = channel_named(state, name).await?;
    state.notify.stop_channel(row.id);
    state.store.delete_channel(row.id).await?;
    tracing::info!("notification channel {name} deleted");
    Ok(())
}

/// Sends one message now (not through the outbox, one attempt) and says how it went.
pub async fn test_channel(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(send_test(&state, &name).await?))
}

/// One test message to channel `name`, now: `{ok, status, answer, title, template_error,
/// latency_ms}`.
pub async fn send_test(state: &AppState, name: &str) -> Result<Value, ApiError> {
    let row = channel_named(state, name).await?;
    let channel = notify::open_channel(state, &row)?;
    let context = sample_context(state, &row).await?;
    let (message, template_error) = notify::render(&row, &context, Event::BuildSuccess);
    let started = std::time::Instant::now();
    let result = state.notify.notifier.send(&channel, &message).await;
    let latency_ms = crate::app::millis(started.elapsed());
    Ok(match result {
        Ok(accepted) => json!({
            "ok": true, "status": accepted.status, "answer": accepted.answer,
            "title": message.title, "template_error": template_error, "latency_ms": latency_ms,
        }),
        Err(error) => json!({
            "ok": false, "status": error.status, "answer": error.to_string(),
            "title": message.title, "template_error": template_error, "latency_ms": latency_ms,
        }),
    })
}

#[derive(Debug, Deserialize)]
pub struct DeliveryQuery {
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
}

pub async fn list_deliveries(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Query(query): Query<DeliveryQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(Value::Array(
        deliveries(&state, query.channel.as_deref(), query.limit.unwrap_or(50)).await?,
    )))
}

/// The newest deliveries (of one channel), each with its attempts, as JSON.
pub async fn deliveries(
    state: &AppState,
    channel: Option<&str>,
    limit: i64,
) -> Result<Vec<Value>, ApiError> {
    let channel_id = match channel.filter(|c| !c.is_empty()) {
        Some(name) => Some(channel_named(state, name).await?.id),
        None => None,
    };
    let rows = state
        .store
        .deliveries(channel_id, limit.clamp(1, 500))
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut attempts = state.store.attempts_of(&ids).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let attempts = attempts.remove(&row.id).unwrap_or_default();
        let mut value = serde_json::to_value(&row).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "attempt_log".into(),
                serde_json::to_value(attempts).unwrap_or_default(),
            );
        }
        out.push(value);
    }
    Ok(out)
}
