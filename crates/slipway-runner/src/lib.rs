//! The Slipway runner agent: registers with a server, leases stages by long-polling, runs
//! each with [`slipway_engine::run`] and streams its step states and log lines back, as
//! [`protocol`] describes. `slipway runner` and the embedded runner of `slipway up` both
//! call [`run`] with a [`RunnerConfig`].
//!
//! How it works:
//! - **Register** (`POST /api/runner/register`) with the name, the labels (plus `os` and
//!   `arch` unless given, in Drone's names: `linux`, `amd64`, `arm64`, ...), the capacity,
//!   the crate version, [`protocol::PROTOCOL_VERSION`] and whether it runs exec stages;
//!   retried with backoff until the server answers. Every later request carries the
//!   credential the answer holds, not the runner token.
//! - **Host exec is opt-in.** A lease of a `type: exec` pipeline (its commands run on this
//!   host, as this process's user) runs only with [`RunnerConfig::allow_exec`]; otherwise
//!   it ends as `error` without running anything. The server leases such stages only to
//!   runners that registered with it, and only for trusted builds.
//! - **Poll**: `capacity` loops, each `POST /api/runner/poll` (the server may hold it for
//!   [`RunnerConfig::poll_timeout`]; the client waits 10 s longer). `204`: poll again at
//!   once. `200`: a [`protocol::Lease`], run it, then poll again, unless the server handed
//!   over the next stage in its answer to `/done` (which asks for one while the runner is
//!   not stopping): then that one runs at once. So at most `capacity` stages run at once.
//! - **A stage** runs in the engine with a sink that turns engine events into
//!   [`protocol::StageEvent`]s (step started, log lines, step finished; pipeline events are
//!   not sent, the result goes in `/done`). Beside the engine run two tasks: the uploader,
//!   which sends the events, and the heartbeat, every `heartbeat_secs` from the
//!   registration, which renews the lease until `/done` is acknowledged. When the engine
//!   returns, the uploader drains the queue, then `/done` carries the pipeline's status (or
//!   `error` with the message, when the engine could not run at all) and the last batch.
//!
//! - **Deploy steps** of a stage (`slipway/deploy`, `peloton/drone-rancher`) reach the
//!   server through the engine's `Deployer`, here `POST /api/runner/stages/{stage}/deploy`
//!   with this runner's credential and the stage's attempt; the answer's NDJSON lines (the
//!   rollout's progress) go to the step's log. Sent once, never retried: a deploy is not
//!   idempotent. The server alone decides whether the build may deploy.
//!
//! Invariants:
//! - **Order and exactly-once.** A stage's events are queued in the order the engine emits
//!   them; one task sends them, one batch at a time, and a batch is resent byte for byte
//!   until acknowledged. Log lines are numbered per step from 0 when their batch is built,
//!   so numbers are contiguous; the server drops lines it already has, so resends never
//!   duplicate a line, and nothing is skipped. A step's `StepFinished` follows its lines.
//! - **Live but batched.** A batch is built 20 ms after something is queued (at once when
//!   the queue holds a whole batch or the engine returned); while a batch is in flight the
//!   queue keeps filling, and the next batch takes up to ~5,000 lines or ~512 KiB,
//!   consecutive lines of a step coalesced into one `Log`. The batch taken once the engine
//!   returned goes with `/done`, so a short stage costs one request beside its poll.
//! - **Bounded memory.** The queue holds at most 1,000,000 lines / 64 MiB per stage. Beyond
//!   that (only when the server has been unreachable for long) lines from the middle are
//!   dropped and replaced by `… N lines dropped while the server was unreachable …`; the
//!   oldest lines, the newest ones and all step starts and ends are kept. The engine's sink
//!   never blocks.
//! - **Retries.** Connection errors, time-outs, 5xx, 408 and 429 are retried with backoff
//!   (100 ms doubling to 5 s, jittered), logging a warning at the first failure and a note
//!   at recovery. `409 lease_lost` (on events, heartbeat or `/done`) kills the stage's run
//!   and drops everything about it, without `/done`. `401` stops the runner with
//!   [`RunnerError::Unauthorized`] (its running stages are dropped like lost ones). Any
//!   other refusal of a stage's events stops that stage and reports it as `error`.
//! - **Cancellation.** `cancel: true` in a heartbeat answer or batch acknowledgement
//!   cancels the engine run: the stage ends `killed`.
//! - **Shutdown.** Cancelling the `shutdown` token stops polling (a poll in flight is
//!   abandoned; a stage the server had just leased to it comes back when its lease expires)
//!   and lets the running stages (and any the server handed over with their ends) finish
//!   and report; [`run`] returns once they have. To
//!   stop them sooner, drop the future (the engine then removes its containers in the
//!   background, and the next engine start removes whatever is left).

pub mod protocol;

mod client;
mod deploy;
mod queue;
mod stage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use client::{
    Backoff, CallError, Client, GaveUp, POLL_MARGIN, REQUEST_TIMEOUT, Reply, Verdict, retry,
};
use protocol::{Lease, PollRequest, RegisterRequest, RegisterResponse};
use stage::{Fatal, Shared};

/// How a runner connects and what it offers.
#[derive(Clone)]
pub struct RunnerConfig {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// The runner token, sent as `Authorization: Bearer` on every request.
    pub token: String,
    /// Unique per runner host.
    pub name: String,
    /// `os` and `arch` are added unless given.
    pub labels: BTreeMap<String, String>,
    /// How many stages run at once (at least 1).
    pub capacity: u32,
    /// Where the engine creates the per-stage workspaces.
    pub work_root: PathBuf,
    /// How long the server may hold a poll.
    pub poll_timeout: Duration,
    /// Run `type: exec` stages, whose commands run directly on this host as this
    /// process's user (`--allow-exec`). Off: such a lease is refused with an error.
    pub allow_exec: bool,
    /// API bases for native notification steps (`--notify-api KIND=URL`).
    pub notify_api: BTreeMap<slipway_engine::NotifyKind, String>,
}

impl std::fmt::Debug for RunnerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerConfig")
            .field("server", &self.server)
            .field("token", &"***")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("capacity", &self.capacity)
            .field("work_root", &self.work_root)
            .field("poll_timeout", &self.poll_timeout)
            .field("allow_exec", &self.allow_exec)
            .field("notify_api", &self.notify_api)
            .finish()
    }
}

/// Why the runner stopped (or could not start).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("invalid runner configuration: {0}")]
    Config(String),
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the server refused the runner token (401 from {url}): {message}")]
    Unauthorized { url: String, message: String },
    #[error("the server refused to register this runner ({status} from {url}): {message}")]
    Registration {
        url: String,
        status: u16,
        message: String,
    },
}

/// Drone's (Go's) name for this machine's architecture.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other if other.starts_with("arm") => "arm",
        other => other,
    }
}

/// Registers, then runs stages until `shutdown` is cancelled (see the crate docs for what
/// happens to running stages) or the server refuses the token.
pub async fn run(config: RunnerConfig, shutdown: CancellationToken) -> Result<(), RunnerError> {
    if !(config.server.starts_with("http://") || config.server.starts_with("https://")) {
        return Err(RunnerError::Config(format!(
            "the server URL `{}` must start with http:// or https://",
            config.server
        )));
    }
    if config.capacity == 0 {
        return Err(RunnerError::Config("capacity must be at least 1".into()));
    }
    let client = Client::new(&config.server, &config.token).map_err(RunnerError::Client)?;
    let stop = shutdown.child_token();

    let Some(registration) = register(&client, &config, &stop).await? else {
        return Ok(());
    };
    tracing::info!(
        "registered with {} as runner {} ({}), capacity {}",
        config.server,
        registration.runner_id,
        config.name,
        config.capacity
    );

    // From now on the runner speaks with its own credential, which the server accepts for
    // this runner only.
    let client = client
        .with_token(&registration.credential)
        .map_err(RunnerError::Client)?;
    let shared = Arc::new(Shared {
        client,
        allow_exec: config.allow_exec,
        notify_api: config.notify_api.clone(),
        runner_id: registration.runner_id,
        heartbeat: Duration::from_secs(registration.heartbeat_secs.max(1)),
        work_root: config.work_root.clone(),
        limits: queue::Limits::default(),
        fatal: Fatal::new(stop),
    });
    let mut loops = JoinSet::new();
    for _ in 0..config.capacity {
        loops.spawn(poll_loop(shared.clone(), config.poll_timeout + POLL_MARGIN));
    }
    while let Some(joined) = loops.join_next().await {
        if let Err(e) = joined {
            tracing::error!("a poll loop stopped unexpectedly: {e}");
        }
    }
    match shared.fatal.take() {
        Some(error) => Err(error),
        None => {
            tracing::info!("runner stopped");
            Ok(())
        }
    }
}

/// `Ok(None)` when stopped before the server answered.
async fn register(
    client: &Client,
    config: &RunnerConfig,
    stop: &CancellationToken,
) -> Result<Option<RegisterResponse>, RunnerError> {
    let mut labels = config.labels.clone();
    labels
        .entry("os".into())
        .or_insert_with(|| std::env::consts::OS.into());
    labels.entry("arch".into()).or_insert_with(|| arch().into());
    let body = serde_json::to_vec(&RegisterRequest {
        name: config.name.clone(),
        labels,
        capacity: config.capacity,
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: protocol::PROTOCOL_VERSION,
        allow_exec: config.allow_exec,
    })
    .map_err(|e| RunnerError::Config(format!("cannot encode the registration: {e}")))?;
    let body = bytes::Bytes::from(body);
    let what = format!("registering with {}", config.server);
    let answer = retry(&what, stop, || {
        let body = body.clone();
        async move {
            client
                .post("/api/runner/register", body, REQUEST_TIMEOUT)
                .await?
                .json::<RegisterResponse>()
        }
    })
    .await;
    match answer {
        Ok(registration) => Ok(Some(registration)),
        Err(GaveUp::Stopped) => Ok(None),
        Err(GaveUp::Failed(e)) => Err(match (&e, e.verdict()) {
            (_, Verdict::Unauthorized) => RunnerError::Unauthorized {
                url: e.url().to_string(),
                message: e.message(),
            },
            (CallError::Status { status, .. }, _) => RunnerError::Registration {
                url: e.url().to_string(),
                status: status.as_u16(),
                message: e.message(),
            },
            _ => RunnerError::Registration {
                url: e.url().to_string(),
                status: 0,
                message: e.to_string(),
            },
        }),
    }
}

/// Polls for a stage and runs it, until stopped.
async fn poll_loop(shared: Arc<Shared>, timeout: Duration) {
    let stop = shared.fatal.stop.clone();
    let body = match serde_json::to_vec(&PollRequest {
        runner_id: shared.runner_id,
    }) {
        Ok(body) => bytes::Bytes::from(body),
        Err(e) => {
            tracing::error!("cannot encode a poll request: {e}");
            return;
        }
    };
    let mut refused = Backoff::new();
    // A stage the server handed over with the end of the last one: it was asked for before
    // any stop, so it runs like one that was running.
    let mut handed: Option<Reply> = None;
    while handed.is_some() || !stop.is_cancelled() {
        if let Some(reply) = handed.take() {
            handed = run_leased(&shared, reply).await;
            continue;
        }
        let answer = retry("polling for work", &stop, || {
            let body = body.clone();
            let client = &shared.client;
            async move {
                let reply = client.post("/api/runner/poll", body, timeout).await?;
                Ok((reply.status != reqwest::StatusCode::NO_CONTENT).then_some(reply))
            }
        })
        .await;
        let reply = match answer {
            Ok(None) => continue,
            Ok(Some(reply)) => reply,
            Err(GaveUp::Stopped) => break,
            Err(GaveUp::Failed(e)) => {
                if e.verdict() == Verdict::Unauthorized {
                    shared.fatal.raise(RunnerError::Unauthorized {
                        url: e.url().to_string(),
                        message: e.message(),
                    });
                    break;
                }
                // Not something a retry would fix, but nothing better to do than wait.
                tracing::error!("polling for work: {e}");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(refused.next_delay()) => {}
                }
                continue;
            }
        };
        refused = Backoff::new();
        handed = run_leased(&shared, reply).await;
    }
}

/// Runs the stage of a `200` answer (a poll's, or a `/done`'s that handed over the next
/// stage); the answer that hands over the one after it, if any.
async fn run_leased(shared: &Arc<Shared>, reply: Reply) -> Option<Reply> {
    match reply.json::<Lease>() {
        // Its own task, so a panic in a stage does not take this poll slot with it.
        Ok(lease) => match tokio::spawn(stage::run_stage(shared.clone(), lease)).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!("a stage stopped unexpectedly: {e}");
                None
            }
        },
        Err(e) => {
            stage::refuse_lease(shared, &reply.body, &e).await;
            None
        }
    }
}
