//! Running one leased stage: the engine, the event sink and queue, the uploader, the
//! heartbeat and the final `/done`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use slipway_engine::{Event, EventSink, RunOptions, Status, WorkspaceSource};
use slipway_spec::plan::PipelineType;
use tokio_util::sync::CancellationToken;

use crate::RunnerError;
use crate::client::{CallError, Client, GaveUp, REQUEST_TIMEOUT, Reply, Verdict, retry};
use crate::protocol::{
    BatchAck, EventBatch, Heartbeat, HeartbeatResponse, Lease, LogLine, StageDone, StageEvent,
    WorkspaceSpec,
};
use crate::queue::{EventQueue, Item, Limits};

/// What every stage of a runner shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub client: Client,
    /// `type: exec` leases may run (see [`crate::RunnerConfig::allow_exec`]).
    pub allow_exec: bool,
    /// [`crate::RunnerConfig::notify_api`].
    pub notify_api: std::collections::BTreeMap<slipway_engine::NotifyKind, String>,
    pub runner_id: i64,
    pub heartbeat: Duration,
    pub work_root: PathBuf,
    pub limits: Limits,
    pub fatal: Fatal,
}

/// An error that stops the whole runner (a refused token), and the token that stops polling.
#[derive(Debug)]
pub(crate) struct Fatal {
    pub stop: CancellationToken,
    error: Mutex<Option<RunnerError>>,
}

impl Fatal {
    pub(crate) fn new(stop: CancellationToken) -> Fatal {
        Fatal {
            stop,
            error: Mutex::new(None),
        }
    }

    /// Records the first fatal error and stops polling.
    pub(crate) fn raise(&self, error: RunnerError) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            tracing::error!("{error}; stopping the runner");
            *slot = Some(error);
        }
        self.stop.cancel();
    }

    pub(crate) fn take(&self) -> Option<RunnerError> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

pub(crate) fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn now_millis() -> i64 {
    unix_millis(SystemTime::now())
}

/// POSTs the same body until the server answers, and reads its JSON answer (see
/// [`retry`] for what is retried).
async fn post_retried<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    stage: &Stage,
    what: &str,
    path: &str,
    body: &Bytes,
) -> Result<T, GaveUp> {
    retry(what, &stage.end, || {
        let body = body.clone();
        async move {
            shared
                .client
                .post(path, body, REQUEST_TIMEOUT)
                .await?
                .json::<T>()
        }
    })
    .await
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, String> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| format!("cannot encode a request: {e}"))
}

/// The state of one stage as its tasks see it.
#[derive(Debug)]
struct Stage {
    id: i64,
    attempt: u32,
    title: String,
    queue: Arc<EventQueue>,
    /// Given to the engine: cancels the run (status killed).
    engine_cancel: CancellationToken,
    /// Nothing more is to be said to the server about this stage: `/done` was acknowledged,
    /// or the stage was lost. Stops the heartbeat and every retry loop.
    end: CancellationToken,
    lost: AtomicBool,
    /// `/done` is on its way: the server may have ended the stage already, so a heartbeat
    /// answered `lease_lost` now says nothing; the answer to `/done` decides.
    reporting_end: AtomicBool,
    /// The server refused the stage's events for good: reported in `/done` as an error.
    rejected: Mutex<Option<String>>,
}

impl Stage {
    fn new(id: i64, attempt: u32, title: String, shared: &Shared, end: CancellationToken) -> Stage {
        Stage {
            id,
            attempt,
            title,
            queue: Arc::new(EventQueue::new(shared.limits)),
            engine_cancel: CancellationToken::new(),
            end,
            lost: AtomicBool::new(false),
            reporting_end: AtomicBool::new(false),
            rejected: Mutex::new(None),
        }
    }

    fn path(&self, what: &str) -> String {
        format!("/api/runner/stages/{}/{what}", self.id)
    }

    /// The server asked for the stage to be cancelled.
    fn cancel_requested(&self) {
        if !self.engine_cancel.is_cancelled() {
            tracing::info!(
                "stage {} (attempt {}): cancelled by the server",
                self.title,
                self.attempt
            );
            self.engine_cancel.cancel();
        }
    }

    /// The stage is not ours any more: kill it, forget its events, say nothing more.
    fn lose(&self, why: &str) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "stage {} (attempt {}): {why}; stopping it without reporting",
                self.title,
                self.attempt
            );
        }
        self.engine_cancel.cancel();
        self.queue.discard();
        self.end.cancel();
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Reacts to a failure that retrying cannot fix.
    fn failed(&self, shared: &Shared, error: CallError) {
        match error.verdict() {
            Verdict::LeaseLost => self.lose(&format!("the lease is lost ({error})")),
            Verdict::Unauthorized => {
                shared.fatal.raise(RunnerError::Unauthorized {
                    url: error.url().to_string(),
                    message: error.message(),
                });
                self.lose("the server refused the runner token");
            }
            Verdict::Rejected | Verdict::Retry => self.reject(error.to_string()),
        }
    }

    /// The server will not take the stage's events: stop the run and report an error.
    fn reject(&self, message: String) {
        tracing::error!(
            "stage {} (attempt {}): {message}; stopping it",
            self.title,
            self.attempt
        );
        let mut slot = self.rejected.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(message);
        self.engine_cancel.cancel();
        self.queue.discard();
    }

    fn rejection(&self) -> Option<String> {
        self.rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Turns engine events into queue items. Never blocks (see [`EventQueue::push`]).
struct StageSink {
    queue: Arc<EventQueue>,
}

impl EventSink for StageSink {
    fn event(&self, event: Event) {
        let item = match event {
            // The server learns the stage's result from `/done`.
            Event::PipelineStarted { .. } | Event::PipelineFinished { .. } => return,
            Event::Artifact {
                step,
                image,
                tags,
                digest,
                ..
            } => Item::Artifact {
                step,
                image,
                tags,
                digest,
            },
            Event::StepStarted { step, .. } => Item::Started {
                step,
                time: now_millis(),
            },
            Event::Log {
                step, time, line, ..
            } => Item::Line {
                step,
                line: LogLine {
                    time: unix_millis(time),
                    line,
                },
            },
            Event::StepFinished {
                step,
                status,
                exit_code,
                ..
            } => Item::Finished {
                step,
                status,
                exit_code,
                time: now_millis(),
            },
        };
        self.queue.push(item);
    }
}

/// Why this runner will not run the lease, if it will not: a `type: exec` pipeline on a
/// runner that was not started with `--allow-exec` (the server should never lease one to
/// it; this is the runner's own line of defence).
fn exec_refusal(lease: &Lease, allow_exec: bool) -> Option<String> {
    let pipeline = lease
        .plan
        .pipelines
        .iter()
        .find(|p| p.kind == PipelineType::Exec)?;
    if allow_exec {
        return None;
    }
    Some(format!(
        "pipeline `{}` is `type: exec`, which runs its commands directly on the runner's host, and this runner was not started with `--allow-exec`; nothing was run",
        pipeline.name
    ))
}

fn run_options(
    lease: &Lease,
    work_root: PathBuf,
    cancel: CancellationToken,
    shared: &Shared,
) -> RunOptions {
    let workspace = match &lease.workspace {
        // The engine clones, then makes sure the commit is there even when only
        // `reference` (a pull request's ref) reaches it: see its workspace module.
        WorkspaceSpec::Git { url, commit, .. } => WorkspaceSource::Git {
            repo: PathBuf::from(url),
            commit: commit.clone(),
            depth: None,
        },
        WorkspaceSpec::Empty => WorkspaceSource::Empty,
    };
    RunOptions {
        workspace,
        secrets: lease.secrets.clone(),
        trusted: lease.trusted,
        cancel,
        work_root,
        default_step_timeout: lease.step_timeout_secs.map(Duration::from_secs),
        build_timeout: lease.stage_timeout_secs.map(Duration::from_secs),
        native_plugins: lease.native_plugins,
        own_registry: lease
            .registry
            .as_ref()
            .map(|r| slipway_engine::RegistryCredential {
                host: r.host.clone(),
                username: r.username.clone(),
                password: r.password.clone(),
            }),
        cache_scope: lease.cache_scope.clone(),
        notify_api: shared.notify_api.clone(),
        deployer: Some(Arc::new(crate::deploy::StageDeployer {
            client: shared.client.clone(),
            runner_id: shared.runner_id,
            stage_id: lease.stage_id,
            attempt: lease.attempt,
        })),
    }
}

/// Runs a leased stage to its end and reports it. Never fails: every problem is reported to
/// the server (or logged, when the server is the problem). The server's answer to the end
/// when it hands over the next stage with it (a poll's `200`), unless the runner is
/// stopping.
pub(crate) async fn run_stage(shared: Arc<Shared>, lease: Lease) -> Option<Reply> {
    let stage = Arc::new(Stage::new(
        lease.stage_id,
        lease.attempt,
        lease.title.clone(),
        &shared,
        CancellationToken::new(),
    ));
    tracing::info!("stage {} (attempt {}) started", stage.title, stage.attempt);

    let uploader = tokio::spawn(upload(shared.clone(), stage.clone()));
    let heartbeat = tokio::spawn(heartbeat(shared.clone(), stage.clone()));
    let options = run_options(
        &lease,
        shared.work_root.clone(),
        stage.engine_cancel.clone(),
        &shared,
    );
    let sink = Arc::new(StageSink {
        queue: stage.queue.clone(),
    });
    let result = match exec_refusal(&lease, shared.allow_exec) {
        Some(refusal) => Err(refusal),
        None => slipway_engine::run(&lease.plan, options, sink)
            .await
            .map_err(|e| e.to_string()),
    };

    // Everything the engine said is queued: let the uploader send the rest, but for its
    // last batch, which goes with `/done`.
    stage.queue.close();
    let last_events = match uploader.await {
        Ok(last) => last,
        Err(e) => {
            stage.reject(format!("the log uploader stopped unexpectedly: {e}"));
            Vec::new()
        }
    };
    let dropped = stage.queue.dropped();
    if dropped > 0 {
        tracing::warn!(
            "stage {} (attempt {}): {dropped} log lines were dropped while the server was unreachable",
            stage.title,
            stage.attempt
        );
    }

    let (status, error) = match (stage.rejection(), result) {
        (Some(message), _) => (
            Status::Error,
            Some(format!("the server refused the stage's events: {message}")),
        ),
        (None, Ok(report)) => match report.pipelines.first() {
            Some(pipeline) => (pipeline.status, pipeline.error.clone()),
            None => (report.status, None),
        },
        (None, Err(e)) => (Status::Error, Some(e)),
    };

    let next = if stage.is_lost() {
        None
    } else {
        let room = !shared.fatal.stop.is_cancelled();
        stage.reporting_end.store(true, Ordering::SeqCst);
        send_done(&shared, &stage, status, error.clone(), last_events, room).await
    };
    stage.end.cancel();
    let _ = heartbeat.await;

    if stage.is_lost() {
        tracing::info!(
            "stage {} (attempt {}) abandoned (engine result: {status})",
            stage.title,
            stage.attempt
        );
    } else {
        match error {
            Some(error) => tracing::info!(
                "stage {} (attempt {}) finished: {status}: {error}",
                stage.title,
                stage.attempt
            ),
            None => tracing::info!(
                "stage {} (attempt {}) finished: {status}",
                stage.title,
                stage.attempt
            ),
        }
    }
    next
}

/// Sends the queued events, one batch at a time, each until acknowledged; returns the
/// last batch (taken once the queue is closed) unsent, for `/done` to carry.
async fn upload(shared: Arc<Shared>, stage: Arc<Stage>) -> Vec<StageEvent> {
    let mut seqs = HashMap::new();
    let path = stage.path("events");
    let what = format!("sending events of stage {}", stage.title);
    loop {
        let batch = tokio::select! {
            biased;
            () = stage.end.cancelled() => return Vec::new(),
            batch = stage.queue.next_batch(&mut seqs) => batch,
        };
        let Some(batch) = batch else {
            return Vec::new();
        };
        if batch.last {
            return batch.events;
        }
        let body = match encode(&EventBatch {
            runner_id: shared.runner_id,
            attempt: stage.attempt,
            events: batch.events,
        }) {
            Ok(body) => body,
            Err(e) => {
                stage.reject(e);
                return Vec::new();
            }
        };
        // The same bytes every time: the server dedups resent lines by their numbers.
        let sent: Result<BatchAck, GaveUp> =
            post_retried(&shared, &stage, &what, &path, &body).await;
        match sent {
            Ok(ack) => {
                if ack.cancel {
                    stage.cancel_requested();
                }
            }
            Err(GaveUp::Stopped) => return Vec::new(),
            Err(GaveUp::Failed(e)) => {
                stage.failed(&shared, e);
                return Vec::new();
            }
        }
    }
}

/// Renews the lease every `heartbeat` until the stage ends; learns of cancellation.
async fn heartbeat(shared: Arc<Shared>, stage: Arc<Stage>) {
    let path = stage.path("heartbeat");
    let what = format!("heartbeat of stage {}", stage.title);
    let body = match encode(&Heartbeat {
        runner_id: shared.runner_id,
        attempt: stage.attempt,
    }) {
        Ok(body) => body,
        Err(e) => return stage.reject(e),
    };
    loop {
        tokio::select! {
            () = stage.end.cancelled() => return,
            () = tokio::time::sleep(shared.heartbeat) => {}
        }
        let answer: Result<HeartbeatResponse, GaveUp> =
            post_retried(&shared, &stage, &what, &path, &body).await;
        match answer {
            Ok(response) => {
                if response.cancel {
                    stage.cancel_requested();
                }
            }
            Err(GaveUp::Stopped) => return,
            Err(GaveUp::Failed(e)) => match e.verdict() {
                // The stage ended with the `/done` in flight: losing it now would abort
                // that request and drop the next stage its answer hands over.
                Verdict::LeaseLost if stage.reporting_end.load(Ordering::SeqCst) => return,
                Verdict::LeaseLost | Verdict::Unauthorized => return stage.failed(&shared, e),
                // A refused heartbeat is not worth killing the build for; the lease will
                // tell if it matters.
                Verdict::Rejected | Verdict::Retry => {
                    tracing::warn!("{what}: {e}");
                }
            },
        }
    }
}

/// Reports the stage's result, with its `events` not sent yet, until acknowledged (or the
/// lease turns out to be lost), asking for the next stage if there is `room`; the answer
/// if it hands one over. Should the server refuse those events, the result is sent again
/// without them, as an error saying why.
async fn send_done(
    shared: &Shared,
    stage: &Stage,
    status: Status,
    error: Option<String>,
    events: Vec<StageEvent>,
    room: bool,
) -> Option<Reply> {
    let had_events = !events.is_empty();
    let body = match encode(&StageDone {
        runner_id: shared.runner_id,
        attempt: stage.attempt,
        status,
        error,
        events,
        next: room,
    }) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!("stage {}: {e}", stage.title);
            return None;
        }
    };
    let path = stage.path("done");
    let what = format!("reporting the end of stage {}", stage.title);
    let sent = retry(&what, &stage.end, || {
        let body = body.clone();
        let path = &path;
        async move { shared.client.post(path, body, REQUEST_TIMEOUT).await }
    })
    .await;
    match sent {
        Ok(reply) => (reply.status == reqwest::StatusCode::OK).then_some(reply),
        Err(GaveUp::Stopped) => None,
        Err(GaveUp::Failed(e)) => match e.verdict() {
            Verdict::LeaseLost | Verdict::Unauthorized => {
                stage.failed(shared, e);
                None
            }
            Verdict::Rejected | Verdict::Retry if had_events => {
                let message = format!("the server refused the stage's events: {e}");
                stage.reject(message.clone());
                Box::pin(send_done(
                    shared,
                    stage,
                    Status::Error,
                    Some(message),
                    Vec::new(),
                    room,
                ))
                .await
            }
            Verdict::Rejected | Verdict::Retry => {
                tracing::error!(
                    "stage {} (attempt {}): the server refused its result: {e}",
                    stage.title,
                    stage.attempt
                );
                None
            }
        },
    }
}

/// A `200` poll answer that is not a [`Lease`] this runner understands: the stage is leased
/// to us all the same, so report it as an error if its id can be read, rather than leaving
/// it to time out.
pub(crate) async fn refuse_lease(shared: &Shared, body: &[u8], error: &CallError) {
    tracing::error!("cannot read a lease from the server: {error}");
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let id = value.get("stage_id").and_then(serde_json::Value::as_i64);
    let attempt = value
        .get("attempt")
        .and_then(serde_json::Value::as_u64)
        .and_then(|a| u32::try_from(a).ok());
    let (Some(id), Some(attempt)) = (id, attempt) else {
        return;
    };
    let title = value
        .get("title")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?")
        .to_string();
    let stage = Stage::new(id, attempt, title, shared, shared.fatal.stop.child_token());
    let message = format!(
        "runner {} (protocol {}) cannot read the lease: {}",
        env!("CARGO_PKG_VERSION"),
        crate::protocol::PROTOCOL_VERSION,
        error.message()
    );
    send_done(
        shared,
        &stage,
        Status::Error,
        Some(message),
        Vec::new(),
        false,
    )
    .await;
}
