//! A minimal server side of the runner protocol, recording what it receives, with failures
//! to order. Like the real server it appends a log line only if its number is the next one
//! for its step, skips lines it has (checking they are the same), and answers `409 log_gap`
//! to a number ahead of it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use slipway_runner::protocol::{
    BatchAck, EventBatch, Heartbeat, HeartbeatResponse, LEASE_LOST, LOG_GAP, Lease, LogLine,
    ProtocolError, RegisterRequest, RegisterResponse, StageDone, StageEvent,
};

pub const TOKEN: &str = "test-runner-token";
/// What the fake hands out at registration, and wants on every later request.
pub const CREDENTIAL: &str = "test-runner-credential";

/// What the fake should do wrong, and when.
#[derive(Debug, Default)]
pub struct Script {
    /// Events requests (counted from 0, resends included) answered 500 without looking.
    pub fail_events: HashSet<usize>,
    /// Events requests processed, then answered 500 (the acknowledgement is "lost").
    pub fail_after_processing: HashSet<usize>,
    /// From this events request on, answer `409 lease_lost`.
    pub lease_lost_from: Option<usize>,
    /// Heartbeats answer `cancel: true` once this step has started.
    pub cancel_when_started: Option<String>,
    /// Sent in the registration answer.
    pub heartbeat_secs: u64,
    /// Each answer to `/done` is held this long (after the end is recorded), and meanwhile,
    /// like the real server once a stage has ended, heartbeats of that stage answer
    /// `409 lease_lost`.
    pub done_answer_delay: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub body: Bytes,
    pub status: StatusCode,
}

#[derive(Debug, Default)]
pub struct Record {
    pub registrations: Vec<RegisterRequest>,
    pub polls: usize,
    pub heartbeats: usize,
    /// Heartbeats of a stage whose `/done` had arrived (answered `409 lease_lost` when
    /// [`Script::done_answer_delay`] is set).
    pub heartbeats_after_done: usize,
    /// Every events request, in arrival order, with the answer given.
    pub requests: Vec<Received>,
    /// Log lines per step, deduplicated by number.
    pub logs: BTreeMap<String, Vec<LogLine>>,
    /// Lines that arrived again (a resend), per step.
    pub duplicates: BTreeMap<String, usize>,
    /// StepStarted / StepFinished, in order, each once.
    pub steps: Vec<StageEvent>,
    pub done: Vec<(i64, StageDone)>,
    /// How many polls had come when each `/done` arrived.
    pub polls_at_done: Vec<usize>,
    /// Stage ids handed over in answers to `/done`.
    pub handed: Vec<i64>,
    /// Broken rules: resends that differ, gaps, events after a step finished, ...
    pub problems: Vec<String>,
    /// The body of the last events request answered with a 5xx, which the next one must
    /// repeat exactly.
    pending_resend: Option<Bytes>,
}

#[derive(Debug)]
pub struct Fake {
    pub script: Mutex<Script>,
    pub record: Mutex<Record>,
    leases: Mutex<VecDeque<Lease>>,
    events_count: AtomicUsize,
}

impl Fake {
    pub fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().expect("record lock")
    }

    pub fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().expect("script lock")
    }

    pub fn push_lease(&self, lease: Lease) {
        self.leases.lock().expect("leases lock").push_back(lease);
    }

    /// Waits until `f` holds of the record, or panics after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Record) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if f(&self.record()) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}: {:#?}",
                    summary(&self.record())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_done(&self, timeout: Duration) -> StageDone {
        self.wait_for("/done", timeout, |r| !r.done.is_empty())
            .await;
        self.record().done[0].1.clone()
    }

    /// The lines of one step, as text.
    pub fn lines(&self, step: &str) -> Vec<String> {
        self.record()
            .logs
            .get(step)
            .map(|lines| lines.iter().map(|l| l.line.clone()).collect())
            .unwrap_or_default()
    }
}

/// A short description of a record, for failure messages (full logs can be huge).
pub fn summary(r: &Record) -> String {
    let logs: BTreeMap<&String, (usize, Vec<&String>)> = r
        .logs
        .iter()
        .map(|(k, v)| {
            (
                k,
                (v.len(), v.iter().rev().take(5).map(|l| &l.line).collect()),
            )
        })
        .collect();
    format!(
        "polls {}, heartbeats {}, events requests {} ({:?}), logs (count, last lines) {logs:?}, \
         steps {:?}, done {:?}, problems {:?}",
        r.polls,
        r.heartbeats,
        r.requests.len(),
        r.requests
            .iter()
            .map(|q| q.status.as_u16())
            .collect::<Vec<_>>(),
        r.steps,
        r.done,
        r.problems
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(ProtocolError {
            code: code.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

/// The answer to give when the request does not carry the runner's own credential (the
/// runner token only registers, as with the real server).
fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    refused_unless(headers, CREDENTIAL)
}

fn refused_unless(headers: &HeaderMap, token: &str) -> Option<Response> {
    let expected = format!("Bearer {token}");
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) if value == expected => None,
        _ => Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "bad runner token",
        )),
    }
}

async fn register(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refused_unless(&headers, TOKEN) {
        return r;
    }
    let Ok(request) = serde_json::from_slice::<RegisterRequest>(&body) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "bad registration");
    };
    fake.record().registrations.push(request);
    let heartbeat_secs = fake.script().heartbeat_secs;
    axum::Json(RegisterResponse {
        runner_id: 7,
        credential: CREDENTIAL.into(),
        lease_secs: heartbeat_secs * 3,
        heartbeat_secs,
    })
    .into_response()
}

async fn poll(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    fake.record().polls += 1;
    let lease = fake.leases.lock().expect("leases lock").pop_front();
    match lease {
        Some(lease) => axum::Json(lease).into_response(),
        None => {
            // Hold the poll a little, as the real server does for longer.
            tokio::time::sleep(Duration::from_millis(200)).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn heartbeat(
    State(fake): State<Arc<Fake>>,
    Path(stage): Path<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    if serde_json::from_slice::<Heartbeat>(&body).is_err() {
        return error(StatusCode::BAD_REQUEST, "bad_request", "bad heartbeat");
    }
    let (cancel_step, ended_is_lost) = {
        let script = fake.script();
        (
            script.cancel_when_started.clone(),
            script.done_answer_delay.is_some(),
        )
    };
    let mut record = fake.record();
    record.heartbeats += 1;
    if ended_is_lost && record.done.iter().any(|(id, _)| *id == stage) {
        record.heartbeats_after_done += 1;
        return error(StatusCode::CONFLICT, LEASE_LOST, "the stage has ended");
    }
    let cancel = cancel_step.is_some_and(|step| {
        record
            .steps
            .iter()
            .any(|e| matches!(e, StageEvent::StepStarted { step: s, .. } if *s == step))
    });
    axum::Json(HeartbeatResponse { cancel }).into_response()
}

async fn events(
    State(fake): State<Arc<Fake>>,
    Path(_stage): Path<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let index = fake.events_count.fetch_add(1, Ordering::SeqCst);
    let (fail, fail_after, lost) = {
        let script = fake.script();
        (
            script.fail_events.contains(&index),
            script.fail_after_processing.contains(&index),
            script.lease_lost_from.is_some_and(|from| index >= from),
        )
    };
    let mut record = fake.record();
    if let Some(previous) = record.pending_resend.take()
        && previous != body
    {
        record.problems.push(format!(
            "events request {index} is not a resend of the failed one"
        ));
    }
    let answer = |record: &mut Record, status: StatusCode, response: Response| {
        record.requests.push(Received {
            body: body.clone(),
            status,
        });
        if status.is_server_error() {
            record.pending_resend = Some(body.clone());
        }
        response
    };
    if lost {
        let r = error(StatusCode::CONFLICT, LEASE_LOST, "the lease expired");
        return answer(&mut record, StatusCode::CONFLICT, r);
    }
    if fail {
        let r = error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "injected failure",
        );
        return answer(&mut record, StatusCode::INTERNAL_SERVER_ERROR, r);
    }
    let Ok(batch) = serde_json::from_slice::<EventBatch>(&body) else {
        record
            .problems
            .push(format!("events request {index} does not parse"));
        let r = error(StatusCode::BAD_REQUEST, "bad_request", "bad batch");
        return answer(&mut record, StatusCode::BAD_REQUEST, r);
    };
    if let Err(problem) = apply(&mut record, batch) {
        record.problems.push(problem.clone());
        let r = error(StatusCode::CONFLICT, LOG_GAP, &problem);
        return answer(&mut record, StatusCode::CONFLICT, r);
    }
    if fail_after {
        let r = error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "lost ack");
        return answer(&mut record, StatusCode::INTERNAL_SERVER_ERROR, r);
    }
    answer(
        &mut record,
        StatusCode::OK,
        axum::Json(BatchAck { cancel: false }).into_response(),
    )
}

fn finished(record: &Record, step: &str) -> bool {
    record
        .steps
        .iter()
        .any(|e| matches!(e, StageEvent::StepFinished { step: s, .. } if s == step))
}

fn apply(record: &mut Record, batch: EventBatch) -> Result<(), String> {
    for event in batch.events {
        match event {
            StageEvent::Log {
                step,
                first_seq,
                lines,
            } => {
                if finished(record, &step) {
                    record
                        .problems
                        .push(format!("lines of `{step}` after it finished"));
                }
                for (i, line) in lines.into_iter().enumerate() {
                    let seq = first_seq + i as u64;
                    let stored = record.logs.entry(step.clone()).or_default();
                    let have = stored.len() as u64;
                    if seq < have {
                        if stored[seq as usize] != line {
                            return Err(format!("`{step}` line {seq} resent differently"));
                        }
                        *record.duplicates.entry(step.clone()).or_default() += 1;
                    } else if seq > have {
                        return Err(format!("`{step}` line {seq} but expected {have}"));
                    } else {
                        stored.push(line);
                    }
                }
            }
            StageEvent::StepStarted { .. }
            | StageEvent::StepFinished { .. }
            | StageEvent::Artifact { .. } => {
                if !record.steps.contains(&event) {
                    record.steps.push(event);
                }
            }
        }
    }
    Ok(())
}

async fn done(
    State(fake): State<Arc<Fake>>,
    Path(stage): Path<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let Ok(done) = serde_json::from_slice::<StageDone>(&body) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "bad done");
    };
    let answer = {
        let mut record = fake.record();
        // The last events come with the end: applied as a batch would be.
        let batch = EventBatch {
            runner_id: done.runner_id,
            attempt: done.attempt,
            events: done.events.clone(),
        };
        if let Err(problem) = apply(&mut record, batch) {
            record.problems.push(problem.clone());
            return error(StatusCode::CONFLICT, LOG_GAP, &problem);
        }
        let next = done.next;
        let polls = record.polls;
        record.polls_at_done.push(polls);
        record.done.push((stage, done));
        // Like the real server: the next stage, if one waits, with the answer.
        let lease = if next {
            fake.leases.lock().expect("leases lock").pop_front()
        } else {
            None
        };
        match lease {
            Some(lease) => {
                record.handed.push(lease.stage_id);
                axum::Json(lease).into_response()
            }
            None => StatusCode::NO_CONTENT.into_response(),
        }
    };
    let delay = fake.script().done_answer_delay;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    answer
}

/// Starts the fake on 127.0.0.1 (a free port); it runs until the test's runtime ends.
pub async fn start(script: Script) -> (Arc<Fake>, SocketAddr) {
    let fake = Arc::new(Fake {
        script: Mutex::new(script),
        record: Mutex::new(Record::default()),
        leases: Mutex::new(VecDeque::new()),
        events_count: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/api/runner/register", post(register))
        .route("/api/runner/poll", post(poll))
        .route("/api/runner/stages/{stage}/heartbeat", post(heartbeat))
        .route("/api/runner/stages/{stage}/events", post(events))
        .route("/api/runner/stages/{stage}/done", post(done))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake server");
    let addr = listener.local_addr().expect("fake server address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("fake server runs");
    });
    (fake, addr)
}
