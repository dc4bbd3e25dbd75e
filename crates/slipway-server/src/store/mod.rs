//! The server's database: repositories, builds, stages, steps (and the whole logs of short
//! steps), secrets, runners and tokens, in SQLite (the default, a file in the data dir) or PostgreSQL (`postgres://…`).
//!
//! One implementation serves both: [`Store`] runs the same SQL through sqlx's `Any` driver
//! (`$1` placeholders, which SQLite accepts too); only the migrations differ
//! (`migrations/sqlite/*.sql`, `migrations/postgres/*.sql`, applied in order at
//! [`Store::open`] and recorded in `schema_migrations`). Times are unix milliseconds
//! (`i64`), flags are `0`/`1` integers, structured values are JSON text.
//!
//! Invariants:
//! - **Build numbers** are per repository, start at 1 and have no gaps or repeats: the next
//!   number is taken inside the transaction that inserts the build.
//! - **A build is created whole or not at all**: build, stages, steps and the delivery id
//!   in one transaction (with its notification outbox row when it is over at once, as a
//!   broken pipeline file makes it). A delivery id already recorded for the repository makes
//!   [`Store::create_build`] fail with [`StoreError::DuplicateDelivery`] and change nothing;
//!   so does a webhook body already built within [`REPLAY_WINDOW_MS`]
//!   ([`StoreError::ReplayedBody`]), whatever its delivery id.
//! - **A lease has one holder**: [`Store::lease_stage`] and [`Store::lease_head`] are a
//!   compare-and-set on `status = 'pending'`, so two runners polling at once cannot both
//!   get a stage; every later change to a leased stage names its attempt and is refused for
//!   another attempt.
//! - Secrets are stored as ciphertext only (see `crate::secrets`); tokens and session ids
//!   as SHA-256 hashes. Deleting a token deletes its sessions.
//!
//! The SQL uses only what both engines share: `$N` placeholders, `RETURNING`,
//! `ON CONFLICT … DO UPDATE/NOTHING`, columns of type BIGINT and TEXT (all the `Any` driver
//! carries; no SUM, whose PostgreSQL type is NUMERIC). On SQLite every transaction is
//! `BEGIN IMMEDIATE` and writes take turns under a 30 s busy timeout; on PostgreSQL the
//! write that starts a transaction (the repository's build counter, a stage's status)
//! locks the row it changes. Code: `open` (URLs, connections, migrations), `builds`
//! (repositories, builds), `queue` (stages, leases, steps, short steps' logs), `commit` (SQLite: the group
//! commit of the runners' stage ends), `misc` (secrets, runners, tokens, sessions, artifacts,
//! counts), `notify` (notification channels, the outbox, deliveries and attempts), `deploy`
//! (environments, their secrets, stacks, revisions and rollout steps), `rows` (decoding, where a bad stored value becomes [`StoreError::Corrupt`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use slipway_engine::Status;

mod builds;
mod commit;
mod deploy;
mod misc;
mod notify;
mod open;
mod queue;
mod rows;

pub use deploy::{
    BuildDeploy, EnvRow, EnvRuleRow, EnvSecretRow, FINAL_STATUSES, NewRevision, RevisionRow,
    StackRow, StepRow,
};
pub use notify::{
    AttemptRow, ChannelRow, DeliveryRow, DeployNotice, NewAttempt, NewDelivery, OutboxRow,
};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot open the database at `{url}`: {message}")]
    Open { url: String, message: String },
    #[error("migration {name} failed: {message}")]
    Migration { name: String, message: String },
    /// A unique name is taken (repository name, secret name of a repository, ...).
    #[error("{what} `{name}` already exists")]
    Conflict { what: &'static str, name: String },
    /// The delivery id was already recorded for this repository; its build is named.
    #[error("delivery `{delivery_id}` was already received (build id {build_id})")]
    DuplicateDelivery { delivery_id: String, build_id: i64 },
    /// The same webhook body was already built within the replay window (a replay under
    /// a new or no delivery id); its build is named.
    #[error("this webhook body was already received (build id {build_id})")]
    ReplayedBody { build_id: i64 },
    #[error("a stored value is corrupt ({what}): {message}")]
    Corrupt { what: String, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A repository Slipway builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repo {
    pub id: i64,
    /// `owner/name` (GitLab: the full group path).
    pub name: String,
    /// `github`, `gitea`, `gitlab` or `generic`.
    pub provider: String,
    pub clone_url: String,
    /// The pipeline file; `None` means `.slipway.yml`, then `.drone.yml`.
    pub config_path: Option<String>,
    /// HMAC secret (or GitLab token) the git host signs deliveries with, sealed
    /// (`sealed:…`, [`crate::secrets::SecretBox::seal_webhook_secret`]; clear only in rows
    /// of an older version, until the next start seals them).
    pub webhook_secret: String,
    pub default_branch: String,
    /// Host volumes and privileged steps allowed.
    pub trusted: bool,
    /// Cancel pending builds of a branch when a newer push to it arrives.
    pub auto_cancel: bool,
    /// At most this many stages of this repository run at once; 0 = no limit.
    pub max_running: i64,
    /// Base URL of the git host's API for commit statuses (`https://api.github.com`,
    /// `https://gitea.example/api/v1`, `https://gitlab.example/api/v4`); `None` = no statuses.
    pub status_url: Option<String>,
    /// The API token for statuses, encrypted like a secret (base64 of nonce + ciphertext).
    pub status_token: Option<String>,
    /// Registry path patterns (`team/shared-*`) a pipeline's token may push to besides the
    /// repository's own path (`owner/name` and below); validated when set.
    #[serde(default)]
    pub registry_paths: Vec<String>,
    pub created: i64,
}

/// What [`Store::create_repo`] needs; ids and times are the store's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRepo {
    pub name: String,
    pub provider: String,
    pub clone_url: String,
    pub config_path: Option<String>,
    pub webhook_secret: String,
    pub default_branch: String,
    pub trusted: bool,
    pub auto_cancel: bool,
    pub max_running: i64,
    pub status_url: Option<String>,
    pub status_token: Option<String>,
}

/// One build of a repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub id: i64,
    pub repo_id: i64,
    /// Per repository, from 1.
    pub number: i64,
    pub status: Status,
    /// `push`, `tag`, `pull_request`, `promote`, `rollback`, `cron`, `custom`.
    pub event: String,
    /// The full git ref.
    pub reference: String,
    pub branch: String,
    pub commit: String,
    /// First line is enough for lists; the whole message is in `context`.
    pub message: String,
    pub author: String,
    /// `webhook`, `@user` (manual), `restart of #N`, ...
    pub trigger: String,
    /// `promote`/`rollback` target.
    pub deploy_to: String,
    /// The delivery that created it, if a webhook did.
    pub delivery_id: Option<String>,
    /// The build's `slipway_spec::BuildContext` as JSON (everything the pipeline saw).
    pub context: serde_json::Value,
    /// Why the build could not run (a broken pipeline file: its lint messages, one a line).
    pub error: Option<String>,
    pub created: i64,
    pub started: Option<i64>,
    pub finished: Option<i64>,
}

/// What [`Store::create_build`] needs besides the compiled pipelines. The number is
/// assigned by the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewBuild {
    pub repo_id: i64,
    pub event: String,
    pub reference: String,
    pub branch: String,
    pub commit: String,
    pub message: String,
    pub author: String,
    pub trigger: String,
    pub deploy_to: String,
    pub delivery_id: Option<String>,
    /// The SHA-256 (hex) of the webhook body the build came from: the same body within
    /// [`REPLAY_WINDOW_MS`] is [`StoreError::ReplayedBody`].
    pub body_digest: Option<String>,
}

/// How long a webhook body is remembered: delivered again within it (under any delivery
/// id), it builds nothing.
pub const REPLAY_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;

/// The part of a new build that depends on its number (`${DRONE_BUILD_NUMBER}` is
/// substituted into the pipeline file): made by the closure given to
/// [`Store::create_build`], inside its transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledBuild {
    /// `Pending` normally; `Error` (with `error`) for a broken pipeline file; `Skipped`
    /// when no pipeline matched.
    pub status: Status,
    pub error: Option<String>,
    /// The `slipway_spec::BuildContext` as JSON.
    pub context: serde_json::Value,
    pub stages: Vec<NewStage>,
}

/// One pipeline of a new build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewStage {
    pub name: String,
    /// `Pending`, or `Skipped` when its trigger did not match.
    pub status: Status,
    /// Names of stages of the same build that must finish first.
    pub depends_on: Vec<String>,
    /// Labels a runner must have (`key` -> `value`).
    pub labels: BTreeMap<String, String>,
    /// The compiled `slipway_spec::plan::PipelinePlan` as JSON.
    pub plan: serde_json::Value,
    /// `clone`, then services, then steps, in plan order.
    pub steps: Vec<String>,
}

/// One pipeline of a build, as queued and run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub id: i64,
    pub build_id: i64,
    pub repo_id: i64,
    /// 1-based position in the file.
    pub number: i64,
    pub name: String,
    pub status: Status,
    pub depends_on: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub plan: serde_json::Value,
    /// 0 until first leased; then the attempt currently (or last) running.
    pub attempt: i64,
    pub runner_id: Option<i64>,
    /// Unix ms at which the current lease ends unless renewed.
    pub lease_expires: Option<i64>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub created: i64,
    pub started: Option<i64>,
    pub finished: Option<i64>,
}

/// One step (or service, or the `clone` pseudo-step) of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: i64,
    pub stage_id: i64,
    /// 1-based position within the stage.
    pub number: i64,
    pub name: String,
    pub status: Status,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub started: Option<i64>,
    pub finished: Option<i64>,
}

/// A repository secret as stored: the value only as ciphertext.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRow {
    pub id: i64,
    pub repo_id: i64,
    pub name: String,
    /// base64 of nonce + ciphertext (see `crate::secrets`).
    pub ciphertext: String,
    /// Given to pull-request builds too.
    pub allow_pull_request: bool,
    pub created: i64,
    pub updated: i64,
}

/// A runner that registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runner {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: i64,
    pub version: String,
    pub last_seen: i64,
    pub created: i64,
    /// The SHA-256 (hex) of the runner's own credential; never shown.
    #[serde(skip)]
    pub credential_hash: String,
}

/// An API token: only its SHA-256 (hex) is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub hash: String,
    /// `admin`, `runner`, or `read`.
    pub scope: String,
    pub created: i64,
}

/// A web UI session: opened by logging in with an admin token, ended by logging out, by
/// its expiry or by deleting the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: i64,
    /// The token it was opened with (as stored now).
    pub token: Token,
    /// The form token its pages carry (the CSRF defence of the UI's forms).
    pub csrf: String,
    pub created: i64,
    pub expires: i64,
}

/// An image a build pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub id: i64,
    pub build_id: i64,
    /// `host/repo:tag`.
    pub image: String,
    pub digest: String,
    pub created: i64,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    pub pending_stages: i64,
    pub running_stages: i64,
    pub builds_total: i64,
    pub runners: i64,
}

/// The database, SQLite or PostgreSQL. Cheap to clone (a pool, or a shared connection).
#[derive(Debug, Clone)]
pub struct Store {
    db: open::Db,
    backend: Backend,
    /// SQLite: the task that commits stage ends together (`commit.rs`).
    ends: Option<commit::EndSender>,
    /// SQLite: repositories read by id (every lease needs its stage's). The database file
    /// belongs to this process, so they change only through [`Store::update_repo`]. Not on
    /// PostgreSQL, which other servers may share. Shared by clones.
    repos: Option<Arc<Mutex<RepoCache>>>,
}

/// Repositories by id, and how many updates there have been: a read that raced an update
/// (it began before the update's count) keeps its row to itself.
#[derive(Debug, Default)]
struct RepoCache {
    updates: u64,
    rows: HashMap<i64, Repo>,
}

/// Which engine is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One change a runner reports about its stage, written with others in one transaction
/// by [`Store::write_report`] and [`Store::end_leased_stage`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReportWrite {
    /// [`Store::update_step`] of the step `name`.
    Step { name: String, update: StepUpdate },
    /// [`Store::add_artifact`] to the stage's build.
    Artifact {
        image: String,
        digest: String,
        now: i64,
    },
    /// The whole log of the step `step` of attempt `attempt`, every line ended by `\n`
    /// (see [`Store::step_log`]). Written once: the same log again (a resent report) is
    /// a no-op.
    Log {
        step: String,
        attempt: i64,
        text: String,
    },
}

/// A runner's end of the stage it holds, for [`Store::end_leased_stage`]. It owns its
/// data: on SQLite it travels to the task that commits ends together.
#[derive(Debug)]
pub struct LeasedEnd {
    pub stage_id: i64,
    pub attempt: i64,
    pub runner_id: i64,
    pub status: Status,
    pub error: Option<String>,
    /// The runner's last report about the stage, applied before it ends.
    pub writes: Vec<ReportWrite>,
    pub now: i64,
    /// The runner has room for another stage: lease it the head of the queue in the same
    /// transaction, as [`Store::lease_head`] would.
    pub next: Option<HeadLease>,
}

/// What leasing the head of the queue to a runner needs besides its id.
#[derive(Debug, Clone)]
pub struct HeadLease {
    /// The runner's labels.
    pub labels: BTreeMap<String, String>,
    /// The end of the lease.
    pub lease_expires: i64,
}

/// What [`Store::end_leased_stage`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedStage {
    /// The stage as ended, without its plan.
    pub stage: Stage,
    /// The steps the runner left open, as they were closed.
    pub closed: Vec<Step>,
    /// The stage leased next to the same runner, whole, when one was asked for and the
    /// head of the queue was one that runner may take.
    pub next: Option<Stage>,
}

/// What [`Store::update_step`] writes: `status` always, the rest only when `Some`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepUpdate {
    pub status: Status,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub started: Option<i64>,
    pub finished: Option<i64>,
}
