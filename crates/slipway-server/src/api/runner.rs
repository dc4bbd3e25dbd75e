//! The runner protocol's endpoints (see `slipway_runner::protocol` for the contract).
//!
//! Who may call what is [`RunnerCaller`]'s: the shared runner token registers, and the
//! credential a registration returns acts as that runner only (the `runner_id` of every
//! poll, heartbeat, events and `/done` must be its own).

/// Labels runners may not give themselves.
const RESERVED_LABEL_PREFIX: &str = "slipway.";

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use slipway_runner::protocol::{
    EventBatch, Heartbeat, HeartbeatResponse, LEASE_LOST, LOG_GAP, PROTOCOL_VERSION, PollRequest,
    RegisterRequest, RegisterResponse, StageDeploy, StageDone,
};

use super::{ApiError, RunnerCaller};
use crate::app::AppState;
use crate::builds::EXEC_LABEL;
use crate::logstore::LogError;
use crate::queue::{self, QueueError};

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> ApiError {
        match e {
            QueueError::LeaseLost { .. } => {
                ApiError::new(StatusCode::CONFLICT, LEASE_LOST, e.to_string())
            }
            QueueError::Log(LogError::Gap { .. }) => {
                ApiError::new(StatusCode::CONFLICT, LOG_GAP, e.to_string())
            }
            QueueError::Store(e) => e.into(),
            QueueError::BadReport(m) => ApiError::bad_request(m),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}

pub async fn register(
    State(state): State<Arc<AppState>>,
    caller: RunnerCaller,
    Json(req): Json<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    caller.may_register()?;
    if req.protocol != PROTOCOL_VERSION {
        return Err(ApiError::bad_request(format!(
            "runner `{}` speaks protocol {} but this server speaks {PROTOCOL_VERSION}: run the same Slipway version on both",
            req.name, req.protocol
        )));
    }
    if req.name.trim().is_empty() {
        return Err(ApiError::bad_request("a runner needs a name"));
    }
    // `slipway.*` labels are the server's to give: `slipway.exec` marks a runner that may
    // run `type: exec` stages on its host, which only `--allow-exec` asks for.
    if let Some(key) = req
        .labels
        .keys()
        .find(|k| k.starts_with(RESERVED_LABEL_PREFIX))
    {
        return Err(ApiError::bad_request(format!(
            "runner `{}` asks for the label `{key}`, but `{RESERVED_LABEL_PREFIX}*` labels are set by the server (for exec pipelines start the runner with `--allow-exec`)",
            req.name
        )));
    }
    let mut labels = req.labels.clone();
    if req.allow_exec {
        labels.insert(EXEC_LABEL.0.to_owned(), EXEC_LABEL.1.to_owned());
    }
    let secret = crate::auth::generate();
    let runner = state
        .store
        .register_runner(
            req.name.trim(),
            &labels,
            i64::from(req.capacity.max(1)),
            &req.version,
            &crate::auth::hash(&secret),
            crate::now_ms(),
        )
        .await?;
    state
        .runners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(runner.id, runner.clone());
    tracing::info!(
        "runner {} (id {}) registered: capacity {}, labels {:?}{}",
        runner.name,
        runner.id,
        runner.capacity,
        runner.labels,
        if req.allow_exec {
            "; runs exec pipelines on its host"
        } else {
            ""
        }
    );
    Ok(Json(RegisterResponse {
        credential: crate::auth::runner_credential(runner.id, &secret),
        runner_id: runner.id,
        lease_secs: state.config.lease.as_secs().max(1),
        heartbeat_secs: state.config.heartbeat().as_secs().max(1),
    }))
}

pub async fn poll(
    State(state): State<Arc<AppState>>,
    caller: RunnerCaller,
    Json(req): Json<PollRequest>,
) -> Result<Response, ApiError> {
    caller.acts_as(req.runner_id)?;
    let runner = seen_runner(&state, req.runner_id).await?;
    lease_answer(queue::poll(&state, &runner).await?)
}

/// The registered runner `id` (from memory when it can be), marked as seen now.
async fn seen_runner(state: &AppState, id: i64) -> Result<crate::store::Runner, ApiError> {
    let cached = state
        .runners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned();
    let mut runner = match cached {
        Some(runner) => runner,
        None => state
            .store
            .runner(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("runner {id} is not registered")))?,
    };
    let now = crate::now_ms();
    // `last_seen` is for the runners page: a few seconds stale is fine, a write per poll
    // is not.
    if now - runner.last_seen > 5_000 {
        state.store.touch_runner(runner.id, now).await?;
        runner.last_seen = now;
    }
    state
        .runners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(runner.id, runner.clone());
    Ok(runner)
}

fn lease_answer(lease: Option<slipway_runner::protocol::Lease>) -> Result<Response, ApiError> {
    match lease {
        Some(lease) => Ok(Json(lease).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

pub async fn heartbeat(
    State(state): State<Arc<AppState>>,
    caller: RunnerCaller,
    Path(id): Path<i64>,
    Json(req): Json<Heartbeat>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    caller.acts_as(req.runner_id)?;
    // Seen, written at most every 5 s as for polls. A runner this server does not know
    // holds no lease either: the renewal below refuses it.
    match seen_runner(&state, req.runner_id).await {
        Err(e) if e.status != StatusCode::NOT_FOUND => return Err(e),
        _ => {}
    }
    let cancel = queue::heartbeat(&state, id, req.runner_id, req.attempt).await?;
    Ok(Json(HeartbeatResponse { cancel }))
}

pub async fn events(
    State(state): State<Arc<AppState>>,
    caller: RunnerCaller,
    Path(id): Path<i64>,
    Json(batch): Json<EventBatch>,
) -> Result<Response, ApiError> {
    caller.acts_as(batch.runner_id)?;
    Ok(Json(queue::events(&state, id, batch).await?).into_response())
}

pub async fn done(
    State(state): State<Arc<AppState>>,
    caller: RunnerCaller,
    Path(id): Path<i64>,
    Json(req): Json<StageDone>,
) -> Result<Response, ApiError> {
    caller.acts_as(req.runner_id)?;
    // Run to the end even if the runner hangs up meanwhile: an end that is committed must
    // also settle its build, and the next stage leased with it must be handed out.
    tokio::spawn(async move { end_stage(&state, id, req).await })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("ending stage {id}: {e}"),
            )
        })?
}

async fn end_stage(state: &Arc<AppState>, id: i64, req: StageDone) -> Result<Response, ApiError> {
    // The runner has room: the next stage, if one is ready now, saves it a poll. Usually
    // it is leased with the end. A runner this server does not know still ends its stage;
    // its next poll learns that it is not registered.
    let runner = if req.next {
        seen_runner(state, req.runner_id).await.ok()
    } else {
        None
    };
    let head = queue::done(state, id, req, runner.as_ref()).await?;
    let Some(runner) = runner else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let lease = match head {
        // Leased with the end; one that cannot run has failed, so look on.
        Some(head) => match queue::hand_out_head(state, &runner, head).await? {
            Some(lease) => Some(lease),
            None => queue::try_lease(state, &runner).await?,
        },
        // The end's transaction found no head to take (or the end was a resend).
        None => queue::lease_by_scan(state, &runner).await?,
    };
    lease_answer(lease)
}

/// A deploy step of a stage this runner holds: checked and started by
/// [`crate::deploy::from_step`] (which refuses untrusted builds); the answer streams the
/// rollout's progress, one JSON object a line, until it ends (or at once without `wait`).
pub async fn deploy(
    State(state): State<Arc<AppState>>,
    caller: RunnerCaller,
    Path(id): Path<i64>,
    Json(req): Json<StageDeploy>,
) -> Result<Response, ApiError> {
    caller.acts_as(req.runner_id)?;
    let stage = queue::leased(&state, id, req.runner_id, req.attempt).await?;
    let wait = req.call.wait;
    let started = crate::deploy::from_step(&state, &stage, req.call).await?;
    let lines = futures_util::StreamExt::map(
        crate::deploy::progress(state.clone(), started, wait),
        |event| {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
        },
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}
