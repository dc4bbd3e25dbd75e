//! Service logs over HTTP: records searched or followed (`GET /api/logs/{env}/{stack}`),
//! the forward routes (`/api/log-routes`), and the UI's pages (`/logs/{env}/{stack}`, a
//! live tail with filters; `/log-routes`).
//!
//! `GET /api/logs/{env}/{stack}` takes `service`, `since`, `until` (a duration ago, an RFC
//! 3339 time or nanoseconds), `grep` (a regular expression over the text without colours),
//! `revision`, `replica`, `stream` (`stdout`|`stderr`), `tail` (the last N; default 100
//! without `since`) and `follow=1`. It answers NDJSON (a record a line), `format=raw` the
//! records' text only, and server-sent events (each `data` a record) to a client that
//! accepts `text/event-stream` (the UI's `EventSource`). Following, new records follow as
//! they are committed; the answer ends when the client goes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use slipway_logs::store::Query as LogQuery;
use slipway_logs::{Positioned, ServiceKey};

use super::pages::{PageForm, PageUser, error_page, field, render};
use super::{Admin, ApiError};
use crate::app::AppState;
use crate::service_logs::{ServiceLogsError, parse_time_bound, record_json};

pub fn page_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/logs/{env}/{stack}", get(logs_page))
        .route("/log-routes", get(routes_page).post(add_route_form))
        .route("/log-routes/{id}/delete", post(delete_route_form))
}

/// The query string of a logs request (the API's and the page's).
#[derive(Debug, Deserialize, Default)]
pub struct LogsQuery {
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub grep: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub replica: Option<String>,
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub tail: Option<String>,
    #[serde(default)]
    pub follow: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
}

fn some(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl LogsQuery {
    fn to_query(&self, env: &str, stack: &str) -> Result<LogQuery, ApiError> {
        let mut q = LogQuery {
            env: Some(env.to_owned()),
            stack: Some(stack.to_owned()),
            ..LogQuery::default()
        };
        q.service = some(&self.service).map(str::to_owned);
        if let Some(s) = some(&self.since) {
            q.since_ns = Some(parse_time_bound("since", s).map_err(ApiError::bad_request)?);
        }
        if let Some(s) = some(&self.until) {
            q.until_ns = Some(parse_time_bound("until", s).map_err(ApiError::bad_request)?);
        }
        if let Some(re) = some(&self.grep) {
            q.grep = Some(regex::Regex::new(re).map_err(|e| {
                ApiError::bad_request(format!("`grep`: not a regular expression: {e}"))
            })?);
        }
        q.revision = some(&self.revision).map(str::to_owned);
        if let Some(r) = some(&self.replica) {
            q.replica = Some(r.parse().map_err(|_| {
                ApiError::bad_request(format!("`replica={r}`: a replica is a number"))
            })?);
        }
        q.stream = match some(&self.stream) {
            None => None,
            Some("stdout") => Some(slipway_logs::Stream::Stdout),
            Some("stderr") => Some(slipway_logs::Stream::Stderr),
            Some(s) => {
                return Err(ApiError::bad_request(format!(
                    "`stream={s}`: write `stdout` or `stderr`"
                )));
            }
        };
        q.tail =
            match some(&self.tail) {
                Some(t) => Some(t.parse().map_err(|_| {
                    ApiError::bad_request(format!("`tail={t}`: a number of records"))
                })?),
                None if q.since_ns.is_none() => Some(100),
                None => None,
            };
        Ok(q)
    }

    fn follow(&self) -> bool {
        matches!(some(&self.follow), Some("1" | "true" | "yes"))
    }
}

impl From<ServiceLogsError> for ApiError {
    fn from(e: ServiceLogsError) -> Self {
        match e {
            ServiceLogsError::Invalid(m) => ApiError::bad_request(m),
            ServiceLogsError::NoRoute(_) => ApiError::not_found(e.to_string()),
            ServiceLogsError::Configured(_) => {
                ApiError::new(StatusCode::CONFLICT, "configured", e.to_string())
            }
            ServiceLogsError::Io(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "service_logs",
                e.to_string(),
            ),
        }
    }
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "service_logs",
        format!("reading service logs: {e}"),
    )
}

/// `GET /api/logs/{env}/{stack}`.
pub async fn get_logs(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path((env, stack)): Path<(String, String)>,
    Query(params): Query<LogsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = params.to_query(&env, &stack)?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let raw = some(&params.format) == Some("raw");
    let follow = params.follow() || sse;
    let follow_query = follow.then(|| query.clone());
    let store = state.service_logs.store.clone();
    // A search runs before the answer starts, so its error is the answer's status; a
    // follow streams until the client goes.
    let found = if follow {
        None
    } else {
        let search = store.clone();
        Some(
            tokio::task::spawn_blocking(move || search.query(&query))
                .await
                .map_err(store_error)?
                .map_err(store_error)?,
        )
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<(ServiceKey, Positioned)>>(16);
    tokio::spawn(async move {
        if let Some(records) = found {
            // Moved out a thousand at a time: a large answer is not held twice.
            let mut records = records.into_iter();
            loop {
                let chunk: Vec<_> = records.by_ref().take(1024).collect();
                if chunk.is_empty() || tx.send(chunk).await.is_err() {
                    return;
                }
            }
        }
        let Some(query) = follow_query else { return };
        let mut tail = store.follow(query);
        loop {
            let batch = tokio::select! {
                _ = tx.closed() => return,
                batch = tail.next() => batch,
            };
            match batch {
                Ok(batch) => {
                    if tx.send(batch).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("following service logs: {e}");
                    return;
                }
            }
        }
    });
    let batches =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    if sse {
        use futures_util::StreamExt;
        let events = batches.flat_map(|batch| {
            futures_util::stream::iter(batch.into_iter().map(|(key, p)| {
                Ok::<_, Infallible>(Event::default().data(record_json(&key, &p).to_string()))
            }))
        });
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }
    use futures_util::StreamExt;
    let body = batches.map(move |batch| {
        let mut out = String::new();
        for (key, p) in &batch {
            if raw {
                out.push_str(&p.record.line);
            } else {
                out.push_str(&record_json(key, p).to_string());
            }
            out.push('\n');
        }
        Ok::<_, Infallible>(out)
    });
    let content_type = if raw {
        "text/plain; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response())
}

/// `GET /api/log-routes`.
pub async fn list_routes(State(state): State<Arc<AppState>>, _admin: Admin) -> Json<Vec<Value>> {
    Json(state.service_logs.routes())
}

#[derive(Debug, Deserialize)]
pub struct AddRoute {
    pub uri: String,
}

/// `POST /api/log-routes` `{"uri": …}`.
pub async fn add_route(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Json(body): Json<AddRoute>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let route = state.service_logs.add_route(&body.uri)?;
    Ok((StatusCode::CREATED, Json(route)))
}

/// `DELETE /api/log-routes/{id}`.
pub async fn delete_route(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service_logs.remove_route(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logs_page(
    State(state): State<Arc<AppState>>,
    Path((env, stack)): Path<(String, String)>,
    Query(params): Query<LogsQuery>,
    PageUser(user): PageUser,
) -> Response {
    let checked = params.to_query(&env, &stack).map(|_| ());
    if let Err(e) = checked {
        return error_page(&state, Some(&user), e);
    }
    let services = state.service_logs.services_of(&env, &stack);
    let mut stream = form_urlencoded::Serializer::new(String::new());
    for (key, value) in [
        ("service", &params.service),
        ("since", &params.since),
        ("grep", &params.grep),
        ("revision", &params.revision),
        ("replica", &params.replica),
        ("stream", &params.stream),
    ] {
        if let Some(v) = some(value) {
            stream.append_pair(key, v);
        }
    }
    stream.append_pair("follow", "1");
    let stream_url = format!(
        "/api/logs/{}/{}?{}",
        form_urlencoded::byte_serialize(env.as_bytes()).collect::<String>(),
        form_urlencoded::byte_serialize(stack.as_bytes()).collect::<String>(),
        stream.finish()
    );
    let ctx = json!({
        "env": env,
        "stack": stack,
        "services": services,
        "stream_url": stream_url,
        "query": {
            "service": some(&params.service),
            "since": some(&params.since),
            "grep": some(&params.grep),
            "revision": some(&params.revision),
            "replica": some(&params.replica),
            "stream": some(&params.stream),
        },
    });
    render(&state, "service_logs.html", "Logs", Some(&user), ctx)
}

fn routes_context(state: &AppState, error: Option<String>) -> Value {
    json!({"routes": state.service_logs.routes(), "error": error})
}

async fn routes_page(State(state): State<Arc<AppState>>, PageUser(user): PageUser) -> Response {
    render(
        &state,
        "log_routes.html",
        "Log routes",
        Some(&user),
        routes_context(&state, None),
    )
}

async fn add_route_form(
    State(state): State<Arc<AppState>>,
    PageForm { user, form }: PageForm,
) -> Response {
    match state
        .service_logs
        .add_route(field(&form, "uri").as_deref().unwrap_or("").trim())
    {
        Ok(_) => Redirect::to("/log-routes").into_response(),
        Err(e) => render(
            &state,
            "log_routes.html",
            "Log routes",
            Some(&user),
            routes_context(&state, Some(e.to_string())),
        ),
    }
}

async fn delete_route_form(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    PageForm { user, .. }: PageForm,
) -> Response {
    match state.service_logs.remove_route(&id) {
        Ok(()) => Redirect::to("/log-routes").into_response(),
        Err(e) => error_page(&state, Some(&user), ApiError::from(e)),
    }
}
