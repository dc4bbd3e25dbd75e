//! Server-sent events: a build's state changes, one step's log, and a stack's rollout,
//! followed live.
//!
//! Both streams start with what is already known (the current states; the stored lines) and
//! continue with live changes, so a page that connects late or reconnects misses nothing.
//! Each message's `data` is one JSON object with a `kind`:
//! - build events: `step` `{stage, step, status, exit_code, started, finished}`, `stage`
//!   `{stage, status, attempt}`, `build` `{status, finished}`; the stream ends after the
//!   build's final `build` message.
//! - log stream: `line` `{seq, line}` or, for several lines at once, `lines` `{seq, lines}`
//!   (`seq` numbers the first), then `end` once the step has finished (or its stage was
//!   handed to another attempt).
//! - a stack's rollout (its newest revision): `revision` `{number, status, message,
//!   rollout}` (`rollout`: what has been asked of it, while it runs), each step recorded
//!   so far and then each new one as `step` `{seq, at, detail}` (`seq` from 1; `detail`
//!   the deployer's event: `service`, `event` and its fields), and `status` `{number,
//!   status, message}` on each change; the stream ends after the status that ends the
//!   rollout (`succeeded`, `failed`, `rolled_back`, or `paused` after a failure).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use slipway_engine::Status;
use tokio::sync::{broadcast, mpsc};

use super::ApiError;
use crate::app::AppState;
use crate::events::ServerEvent;
use crate::logstore::LogKey;
use crate::store::{Build, FINAL_STATUSES, StackRow};

fn sse(rx: mpsc::Receiver<Event>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn data(value: &serde_json::Value) -> Event {
    Event::default().data(value.to_string())
}

/// `GET …/builds/{n}/events`.
pub async fn build_events(state: Arc<AppState>, build: Build) -> Result<Response, ApiError> {
    // Subscribe before taking the snapshot, so nothing falls between the two; the build is
    // read again for the same reason.
    let mut events = state.events.subscribe();
    let build = state.store.build(build.id).await?.unwrap_or(build);
    let stages = state.store.stage_states(build.id).await?;
    let steps = state.store.steps_of_build(build.id).await?;
    let (tx, rx) = mpsc::channel(256);
    let mut snapshot = Vec::new();
    for stage in &stages {
        snapshot.push(json!({"kind": "stage", "stage": stage.number, "status": stage.status, "attempt": stage.attempt}));
        for step in steps.iter().filter(|s| s.stage_id == stage.id) {
            snapshot.push(
                json!({"kind": "step", "stage": stage.number, "step": step.name,
                "status": step.status, "exit_code": step.exit_code,
                "started": step.started, "finished": step.finished}),
            );
        }
    }
    snapshot.push(json!({"kind": "build", "status": build.status, "finished": build.finished}));
    let build_id = build.id;
    let already_done = build.status.is_done();
    tokio::spawn(async move {
        for value in snapshot {
            if tx.send(data(&value)).await.is_err() {
                return;
            }
        }
        if already_done {
            return;
        }
        loop {
            let received = tokio::select! {
                // The page went away.
                () = tx.closed() => return,
                received = events.recv() => received,
            };
            let event = match received {
                Ok(event) if event.build_id() == Some(build_id) => event,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Events were missed, maybe the last one: ask the store.
                    match state.store.build(build_id).await {
                        Ok(Some(b)) if b.status.is_done() => {
                            let value = json!({"kind": "build", "status": b.status, "finished": b.finished});
                            let _ = tx.send(data(&value)).await;
                            return;
                        }
                        _ => continue,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let finished = matches!(&event, ServerEvent::Build { status, .. } if status.is_done());
            let value = serde_json::to_value(&event).unwrap_or_default();
            if tx.send(data(&value)).await.is_err() || finished {
                return;
            }
        }
    });
    Ok(sse(rx))
}

/// Whether nothing more will be recorded of a revision: a final status, or `paused` (its
/// rollout stopped after a failure and left it for a person).
pub fn rollout_over(status: &str) -> bool {
    FINAL_STATUSES.contains(&status) || status == "paused"
}

fn rollout_step(seq: u64, at: i64, detail: &serde_json::Value) -> Event {
    data(&json!({"kind": "step", "seq": seq, "at": at, "detail": detail}))
}

fn revision_status(number: i64, status: &str, message: Option<&str>) -> Event {
    data(&json!({"kind": "status", "number": number, "status": status, "message": message}))
}

/// `GET /api/stacks/{env}/{stack}/events`: the newest revision's rollout.
pub async fn stack_events(state: Arc<AppState>, stack: StackRow) -> Result<Response, ApiError> {
    // Subscribed before the snapshot is read, so nothing falls between the two; a step
    // in both is known by its `seq`.
    let mut events = state.events.subscribe();
    let (tx, rx) = mpsc::channel(256);
    let Some(revision) = state.store.revisions(stack.id, 1).await?.into_iter().next() else {
        // Nothing to follow: the stream ends at once.
        return Ok(sse(rx));
    };
    let steps = state.store.rollout_steps(revision.id).await?;
    let asked = crate::deploy::rollout_asked(&state, stack.id);
    let mut snapshot = vec![data(&json!({"kind": "revision", "number": revision.number,
        "status": revision.status, "message": revision.message, "rollout": asked}))];
    let mut sent = 0u64;
    for step in &steps {
        sent += 1;
        snapshot.push(rollout_step(sent, step.at, &step.detail));
    }
    let (revision_id, number) = (revision.id, revision.number);
    let mut status = revision.status.clone();
    tokio::spawn(async move {
        for event in snapshot {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        if rollout_over(&status) {
            return;
        }
        loop {
            let received = tokio::select! {
                () = tx.closed() => return,
                received = events.recv() => received,
            };
            let out = match received {
                Ok(ServerEvent::RolloutStep {
                    revision_id: r,
                    seq,
                    at,
                    detail,
                    ..
                }) if r == revision_id => {
                    if seq <= sent {
                        continue;
                    }
                    sent = seq;
                    vec![rollout_step(seq, at, &detail)]
                }
                Ok(ServerEvent::Revision {
                    revision_id: r,
                    status: now,
                    message,
                    ..
                }) if r == revision_id => {
                    status.clone_from(&now);
                    vec![revision_status(number, &now, message.as_deref())]
                }
                Ok(_) => continue,
                // Events were missed: what the store has that was not sent yet.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let (Ok(steps), Ok(Some(row))) = (
                        state.store.rollout_steps(revision_id).await,
                        state.store.revision(stack.id, number).await,
                    ) else {
                        continue;
                    };
                    let mut out = Vec::new();
                    for step in steps
                        .iter()
                        .skip(usize::try_from(sent).unwrap_or(usize::MAX))
                    {
                        sent += 1;
                        out.push(rollout_step(sent, step.at, &step.detail));
                    }
                    if row.status != status {
                        status.clone_from(&row.status);
                        out.push(revision_status(number, &row.status, row.message.as_deref()));
                    }
                    out
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            for event in out {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if rollout_over(&status) {
                return;
            }
        }
    });
    Ok(sse(rx))
}

/// `GET …/logs/{stage}/{step}/stream`.
pub async fn log_stream(state: Arc<AppState>, key: LogKey) -> Result<Response, ApiError> {
    let mut events = state.events.subscribe();
    let mut follower = state.logs.follow(key.clone());
    let stage = state
        .store
        .stage_state(key.stage_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such stage"))?;
    let complete = log_complete(&state, &key).await;
    let (tx, rx) = mpsc::channel(1024);
    let stage_number = stage.number;
    let step = key.step.clone();
    tokio::spawn(async move {
        if complete {
            finish_log(&mut follower, &tx).await;
            return;
        }
        loop {
            tokio::select! {
                () = tx.closed() => return,
                next = follower.next_chunk(LINES_PER_MESSAGE) => match next {
                    Some(Ok((seq, lines))) => {
                        if tx.send(log_lines(seq, lines)).await.is_err() {
                            return;
                        }
                    }
                    _ => return,
                },
                event = events.recv() => {
                    let ended = match event {
                        Ok(ServerEvent::Step { build_id, stage, step: s, status, .. })
                            if build_id == key.build_id && stage == stage_number && s == step =>
                        {
                            status.is_done()
                        }
                        Ok(ServerEvent::Stage { build_id, stage, status, .. })
                            if build_id == key.build_id && stage == stage_number =>
                        {
                            status == Status::Pending || status.is_done()
                        }
                        Ok(_) => false,
                        // Missed events, maybe this step's end: ask the store.
                        Err(broadcast::error::RecvError::Lagged(_)) => log_complete(&state, &key).await,
                        Err(broadcast::error::RecvError::Closed) => true,
                    };
                    if ended {
                        // Everything the step wrote is stored before its end is published.
                        finish_log(&mut follower, &tx).await;
                        return;
                    }
                }
            }
        }
    });
    Ok(sse(rx))
}

/// Most lines one `lines` message carries.
const LINES_PER_MESSAGE: usize = 500;

/// Log lines as one SSE message: `line` `{seq, line}` for one, `lines` `{seq, lines}` (the
/// first line's number and the lines in order) for several, so a chatty step costs a
/// message per batch rather than per line. Serialised from borrowed structs rather than a
/// `serde_json::Value`.
fn log_lines(seq: u64, lines: Vec<String>) -> Event {
    #[derive(serde::Serialize)]
    struct One<'a> {
        kind: &'static str,
        seq: u64,
        line: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Many<'a> {
        kind: &'static str,
        seq: u64,
        lines: &'a [String],
    }
    let text = match lines.as_slice() {
        [line] => serde_json::to_string(&One {
            kind: "line",
            seq,
            line,
        }),
        lines => serde_json::to_string(&Many {
            kind: "lines",
            seq,
            lines,
        }),
    }
    .unwrap_or_default();
    Event::default().data(text)
}

/// Sends the lines of a complete log not sent yet, then `end`.
async fn finish_log(follower: &mut crate::logstore::Follower, tx: &mpsc::Sender<Event>) {
    if let Ok(lines) = follower.drain_stored().await
        && let Some(&(first, _)) = lines.first()
    {
        let mut seq = first;
        let mut texts: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
        while !texts.is_empty() {
            let rest = texts.split_off(texts.len().min(LINES_PER_MESSAGE));
            let n = texts.len() as u64;
            if tx.send(log_lines(seq, texts)).await.is_err() {
                return;
            }
            seq += n;
            texts = rest;
        }
    }
    let _ = tx.send(data(&json!({"kind": "end"}))).await;
}

/// Whether a step's log can get no more lines: its attempt is a past one, its stage is
/// over, or the step has ended. A stage not leased yet (attempt 0) is not complete: its
/// first attempt is what a follower waits for.
async fn log_complete(state: &AppState, key: &LogKey) -> bool {
    let Ok(Some(stage)) = state.store.stage_state(key.stage_id).await else {
        return true;
    };
    if stage.attempt > key.attempt || stage.status.is_done() {
        return true;
    }
    if stage.attempt < key.attempt {
        return false;
    }
    match state.store.steps(key.stage_id).await {
        Ok(steps) => steps
            .iter()
            .find(|s| s.name == key.step)
            .is_none_or(|s| s.status.is_done()),
        Err(_) => true,
    }
}
