//! The runner protocol: HTTP + JSON between a runner and the server, shared by both sides.
//!
//! Registration carries `Authorization: Bearer <runner token>` (the token shared by every
//! runner of a server) and is answered with the runner's own credential
//! ([`RegisterResponse::credential`]), which every later request carries instead: the
//! server accepts it only for that runner's id. Paths are relative to the server's URL:
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /api/runner/register` | [`RegisterRequest`] | [`RegisterResponse`] |
//! | `POST /api/runner/poll` | [`PollRequest`] | `200` [`Lease`], or `204` when nothing matched within the poll window |
//! | `POST /api/runner/stages/{stage}/heartbeat` | [`Heartbeat`] | [`HeartbeatResponse`] |
//! | `POST /api/runner/stages/{stage}/events` | [`EventBatch`] | [`BatchAck`] |
//! | `POST /api/runner/stages/{stage}/done` | [`StageDone`] | `204`, or `200` [`Lease`] of the next stage when [`StageDone::next`] asked for one |
//! | `POST /api/runner/stages/{stage}/deploy` | [`StageDeploy`] | `200` NDJSON: one [`DeployProgress`] a line, as the rollout goes; `403` [`DEPLOY_REFUSED`] when the build may not deploy |
//!
//! Errors come back as a non-2xx status with a [`ProtocolError`] body. `409` with code
//! [`LEASE_LOST`] means the stage is no longer this runner's (its lease expired and the stage
//! went to another runner, or it was finished): the runner stops the stage and forgets it.
//! Any other failure (connection refused, 5xx) is retried with backoff, so a server restart
//! only delays reporting.
//!
//! Ordering and exactly-once logs: the runner sends the events of one stage in the order
//! they happened, one batch at a time, and resends a batch until it is acknowledged. Log
//! lines carry a per-(stage, attempt, step) sequence number starting at 0; the server
//! appends a line only if its number is the next one it expects for that step, skips lines
//! it already has (a resent batch), and answers `409` code [`LOG_GAP`] if a number is ahead
//! of what it expects (which the runner's ordering rules out). The acknowledgement comes
//! after the lines are stored. A step's `StepFinished` is sent after all its lines, so a
//! finished step's log is complete. The last batch may travel in `/done` instead
//! ([`StageDone::events`]); the server applies it, then ends the stage, and answers a resent
//! `/done` of an ended stage without applying anything again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use slipway_engine::Status;
use slipway_spec::Plan;

/// Bumped when a change would break runners of the previous version.
pub const PROTOCOL_VERSION: u32 = 2;

/// [`ProtocolError::code`] of a `409`: the stage's lease is gone; stop working on it.
pub const LEASE_LOST: &str = "lease_lost";
/// [`ProtocolError::code`] of a `409`: a log line number is ahead of what the server has.
pub const LOG_GAP: &str = "log_gap";
/// [`ProtocolError::code`] of a `403`: the stage's build may not deploy (a pull request,
/// an untrusted repository).
pub const DEPLOY_REFUSED: &str = "deploy_refused";

pub use slipway_engine::deployer::{DeployCall, DeployProgress};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Unique per runner host; registering again under the same name updates it.
    pub name: String,
    /// `key=value` labels; a stage runs only on a runner that has every label the stage's
    /// pipeline asks for (`platform`, `node`, ...). Runners report `os` and `arch` themselves.
    pub labels: BTreeMap<String, String>,
    /// How many stages it runs at once.
    pub capacity: u32,
    pub version: String,
    pub protocol: u32,
    /// The runner runs `type: exec` stages (their commands directly on its host): it was
    /// started with `--allow-exec`. The server then gives it the label `slipway.exec`,
    /// which exec stages ask for; runners may not set `slipway.*` labels themselves.
    #[serde(default)]
    pub allow_exec: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub runner_id: i64,
    /// This runner's own credential: the bearer token of every later request (the runner
    /// token only registers). Registering again replaces it.
    pub credential: String,
    /// A lease lasts this long unless renewed by a heartbeat.
    pub lease_secs: u64,
    /// Send a heartbeat at least this often.
    pub heartbeat_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollRequest {
    pub runner_id: i64,
}

/// A stage handed to a runner, with everything needed to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub stage_id: i64,
    /// 1 for the first run of the stage; higher after a lease expired. Every later request
    /// about this stage names it, and logs are kept per attempt.
    pub attempt: u32,
    /// For log lines and the runner's own messages: `owner/name#number stage`.
    pub title: String,
    /// A plan with exactly one pipeline (its `depends_on` already resolved by the server).
    pub plan: Plan,
    pub workspace: WorkspaceSpec,
    /// Secret name -> value, only those the stage's steps name and the build may have.
    pub secrets: BTreeMap<String, String>,
    /// Host volumes and privileged steps allowed (repository setting).
    pub trusted: bool,
    pub step_timeout_secs: Option<u64>,
    pub stage_timeout_secs: Option<u64>,
    /// Run well-known plugins (`plugins/docker`) natively (a server setting).
    #[serde(default = "yes")]
    pub native_plugins: bool,
    /// The server's own registry and a short-lived credential for it, valid while the stage
    /// runs: native `plugins/docker` steps push there by default, and other steps may use
    /// it as the secret `slipway_registry_password` (user `slipway_registry_username`).
    #[serde(default)]
    pub registry: Option<RegistryAccess>,
    /// Whose `cache` volumes the stage mounts (dependency caches kept between builds):
    /// `repo-<id>` for builds of the repository's own branches and tags, `repo-<id>-pr` for
    /// pull requests, so an untrusted change never writes what trusted builds read.
    #[serde(default)]
    pub cache_scope: Option<String>,
}

fn yes() -> bool {
    true
}

/// A registry and an account for it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAccess {
    /// `host:port` as in image names.
    pub host: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("host", &self.host)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What to put in the workspace before the first step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WorkspaceSpec {
    /// `git clone` of `url`, checkout of `commit`; `reference` is fetched too, so commits
    /// only reachable from it (pull requests) can be checked out.
    Git {
        url: String,
        reference: String,
        commit: String,
    },
    Empty,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub runner_id: i64,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The build was cancelled: kill the stage and report it as `killed`.
    pub cancel: bool,
}

/// Events of one stage, in the order they happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub runner_id: i64,
    pub attempt: u32,
    pub events: Vec<StageEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StageEvent {
    StepStarted {
        step: String,
        /// Unix milliseconds.
        time: i64,
    },
    /// Consecutive lines of one step, numbered from `first_seq`.
    Log {
        step: String,
        first_seq: u64,
        lines: Vec<LogLine>,
    },
    StepFinished {
        step: String,
        status: Status,
        exit_code: Option<i64>,
        /// Unix milliseconds.
        time: i64,
        error: Option<String>,
    },
    /// A step pushed an image: `image` is `host/repo` without a tag, `tags` what was pushed.
    Artifact {
        step: String,
        image: String,
        tags: Vec<String>,
        digest: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Unix milliseconds.
    pub time: i64,
    /// Masked, without its line terminator.
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAck {
    /// Whether the stage was cancelled meanwhile (as in [`HeartbeatResponse::cancel`]).
    pub cancel: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageDone {
    pub runner_id: i64,
    pub attempt: u32,
    /// `success`, `failure`, `killed`, `error` or `skipped`.
    pub status: Status,
    /// Why the stage could not run, if it could not.
    pub error: Option<String>,
    /// The stage's last events, not sent before: applied first, exactly like an
    /// [`EventBatch`] (so a short stage needs no events request at all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<StageEvent>,
    /// The runner has room for another stage now: the answer may hand it one (`200` with a
    /// [`Lease`], as a poll would) instead of `204`, which saves the poll.
    #[serde(default)]
    pub next: bool,
}

/// A deploy step of a leased stage asks the server to deploy. Not retried: a deploy is
/// not idempotent, and its step fails with the reason instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageDeploy {
    pub runner_id: i64,
    pub attempt: u32,
    pub call: DeployCall,
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolError {
    /// A stable identifier: [`LEASE_LOST`], [`LOG_GAP`], `unauthorized`, `bad_request`, ...
    pub code: String,
    pub message: String,
}
