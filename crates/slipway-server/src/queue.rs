//! The build queue seen from the runners: which pending stage a polling runner gets, its
//! lease, what the runner reports back, and what happens when a runner disappears.
//!
//! The queue is the `stages` table: nothing is held only in memory, so a server restart
//! loses no queued or running stage. Memory holds a [`tokio::sync::Notify`] that wakes
//! long-polling runners when a stage may have become ready, and two caches ([`Recent`])
//! that save reads, never decisions: the builds this process started (what a lease needs
//! of them never changes) and the leases it handed out (a `/done` that matches one skips
//! reading the stage; the end is a compare-and-set on the lease all the same).
//!
//! Invariants:
//! - A stage is handed out only when every stage it depends on is done, the build is not
//!   being cancelled, the runner has every label the stage asks for, and its repository is
//!   under its concurrency limit; oldest first.
//! - Leasing is a compare-and-set in the store, so two polling runners never get the same
//!   stage. The head of the queue is leased in one statement when it needs nothing to be
//!   decided here (`Store::lease_head`: no `depends_on`, no concurrency limit, labels the
//!   runner has), also together with the end of the runner's previous stage; any other
//!   head sends the poll through the pending stages page by page. Every report about a
//!   stage names its attempt; one for an attempt that is no longer current is answered
//!   with `lease_lost`, so a runner that was presumed dead cannot overwrite its
//!   successor's work.
//! - What a lease may do follows its build's [`builds::Trust`]: `type: exec`, host volumes,
//!   `privileged` and the registry token only for a trusted build; a secret not marked for
//!   pull requests never goes to a pull request, nor to its restarts and promotions.
//! - A lease that expires (no heartbeat) puts the stage back in the queue with its steps
//!   reset, up to [`crate::config::ServerConfig::max_attempts`] attempts in all; then the
//!   stage fails. Logs of earlier attempts stay, under their attempt number.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use slipway_engine::Status;
use slipway_runner::protocol::{
    BatchAck, EventBatch, Lease, RegistryAccess, StageDone, StageEvent, WorkspaceSpec,
};
use slipway_spec::Plan;
use slipway_spec::plan::{PipelinePlan, PipelineType};
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, millis};
use crate::builds;
use crate::events::ServerEvent;
use crate::logstore::{LogError, LogKey};
use crate::store::{
    EndedStage, HeadLease, LeasedEnd, ReportWrite, Runner, Stage, StepUpdate, StoreError,
};

/// Why a runner's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("stage {stage} attempt {attempt} is no longer leased to this runner")]
    LeaseLost { stage: i64, attempt: i64 },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stage {0}: {1}")]
    Corrupt(i64, String),
    /// The runner sent something the protocol does not allow.
    #[error("{0}")]
    BadReport(String),
}

impl From<builds::BuildError> for QueueError {
    fn from(e: builds::BuildError) -> Self {
        match e {
            builds::BuildError::Store(e) => QueueError::Store(e),
            other => QueueError::Corrupt(0, other.to_string()),
        }
    }
}

/// A small cache by id. Dropped whole when it grows past [`Recent::MAX`] (entries of
/// builds and stages ended by another server process are never removed one by one), which
/// costs only the reads it saves.
#[derive(Debug)]
pub struct Recent<T>(std::sync::Mutex<std::collections::HashMap<i64, T>>);

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Recent(std::sync::Mutex::default())
    }
}

impl<T: Clone> Recent<T> {
    const MAX: usize = 4096;

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: i64) -> Option<T> {
        self.lock().get(&id).cloned()
    }

    pub fn insert(&self, id: i64, value: T) {
        let mut map = self.lock();
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(id, value);
    }

    pub fn remove(&self, id: i64) {
        self.lock().remove(&id);
    }
}

/// Who holds a stage this process leased, and where its logs and events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasedStage {
    pub runner_id: i64,
    pub key: StageKey,
}

/// What reporting about a stage needs of it: its logs' and live events' addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageKey {
    pub id: i64,
    pub build_id: i64,
    /// The stage's number in its build.
    pub number: i64,
    pub attempt: i64,
}

impl From<&Stage> for StageKey {
    fn from(stage: &Stage) -> StageKey {
        StageKey {
            id: stage.id,
            build_id: stage.build_id,
            number: stage.number,
            attempt: stage.attempt,
        }
    }
}

/// Waits up to the poll window for a stage this runner may run, and leases it.
pub async fn poll(state: &Arc<AppState>, runner: &Runner) -> Result<Option<Lease>, QueueError> {
    let deadline = tokio::time::Instant::now() + state.config.poll_wait;
    loop {
        // Registered before looking, so a notification between the look and the wait is
        // not missed.
        let notified = state.queue.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(lease) = try_lease(state, runner).await? {
            return Ok(Some(lease));
        }
        // Also look again now and then: a concurrency slot frees up without a notice when
        // another server process (PostgreSQL deployments) finishes a stage.
        let wake = (tokio::time::Instant::now() + Duration::from_secs(5)).min(deadline);
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// Whether a runner with `labels` may run a stage asking for `wanted`.
pub fn labels_match(wanted: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Pending stages are read in pages of this many, oldest first, until one is leased: the
/// oldest page nearly always has a stage this runner can take.
const PAGE: i64 = 32;
/// A poll looks at no more pending stages than this.
const MAX_SCANNED: usize = 4096;

/// Leases the oldest stage this runner may run, if one is ready now (no waiting).
pub async fn try_lease(
    state: &Arc<AppState>,
    runner: &Runner,
) -> Result<Option<Lease>, QueueError> {
    // The common case, a head of the queue any runner may take, in one statement.
    let now = crate::now_ms();
    let expires = now + millis(state.config.lease);
    let head = state
        .store
        .lease_head(runner.id, &runner.labels, expires, now)
        .await?;
    if let Some(head) = head
        && let Some(lease) = hand_out_head(state, runner, head).await?
    {
        return Ok(Some(lease));
    }
    lease_by_scan(state, runner).await
}

/// Leases the oldest stage this runner may run by reading the pending stages page by
/// page: every case, the ones [`try_lease`] takes as the head of the queue too.
pub async fn lease_by_scan(
    state: &Arc<AppState>,
    runner: &Runner,
) -> Result<Option<Lease>, QueueError> {
    let mut after = 0;
    let mut scanned = 0;
    let mut build_stages: BTreeMap<i64, Vec<Stage>> = BTreeMap::new();
    let mut repos: BTreeMap<i64, Option<crate::store::Repo>> = BTreeMap::new();
    loop {
        let page = state.store.pending_stages(after, PAGE).await?;
        let full = page.len() as i64 == PAGE;
        scanned += page.len();
        after = page.last().map_or(after, |s| s.id);
        if let Some(lease) = lease_from(state, runner, page, &mut build_stages, &mut repos).await? {
            return Ok(Some(lease));
        }
        if !full || scanned >= MAX_SCANNED {
            return Ok(None);
        }
    }
}

/// The first stage of `page` this runner may run, leased.
async fn lease_from(
    state: &Arc<AppState>,
    runner: &Runner,
    page: Vec<Stage>,
    build_stages: &mut BTreeMap<i64, Vec<Stage>>,
    repos: &mut BTreeMap<i64, Option<crate::store::Repo>>,
) -> Result<Option<Lease>, QueueError> {
    for stage in page {
        if !labels_match(&stage.labels, &runner.labels) {
            continue;
        }
        if stage.cancel_requested {
            // Cancelled while it waited (or while its lease was being taken back): it
            // will never run.
            let now = crate::now_ms();
            if state
                .store
                .finish_stage(stage.id, None, Status::Killed, Some("cancelled"), now)
                .await?
            {
                builds::publish_stage(state, &stage, Status::Killed).await;
                builds::settle(state, stage.build_id).await?;
            }
            continue;
        }
        // Siblings only matter to a stage that depends on some (most depend on none).
        if !stage.depends_on.is_empty() {
            let siblings = match build_stages.entry(stage.build_id) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(state.store.stage_states(stage.build_id).await?)
                }
            };
            if builds::dependencies_outcome(siblings, &stage).is_none() {
                continue;
            }
        }
        let repo = match repos.entry(stage.repo_id) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(state.store.repo(stage.repo_id).await?)
            }
        };
        let Some(repo) = repo.clone() else {
            continue;
        };
        if repo.max_running > 0 && state.store.running_count(repo.id).await? >= repo.max_running {
            continue;
        }
        let now = crate::now_ms();
        let expires = now + millis(state.config.lease);
        let Some(leased) = state
            .store
            .lease_stage(stage.id, runner.id, expires, now)
            .await?
        else {
            continue; // Another runner won it.
        };
        if let Some(lease) = hand_out(state, runner, &repo, leased).await? {
            return Ok(Some(lease));
        }
    }
    Ok(None)
}

/// The lease of `head`, a stage [`crate::store::Store::lease_head`] (or the end of the
/// runner's previous stage) just leased to `runner`; `None` when it cannot run (it failed).
pub async fn hand_out_head(
    state: &Arc<AppState>,
    runner: &Runner,
    head: Stage,
) -> Result<Option<Lease>, QueueError> {
    match state.store.repo(head.repo_id).await? {
        Some(repo) => hand_out(state, runner, &repo, head).await,
        None => {
            fail_leased(state, &head, "its repository is gone").await?;
            Ok(None)
        }
    }
}

/// Makes the lease of a stage just leased to `runner` in the store, starts its build if
/// it is the first, and tells the live pages; `None` when the stage cannot run at all (a
/// secret that does not decrypt, a corrupt plan): it fails rather than being handed out
/// again and again.
async fn hand_out(
    state: &Arc<AppState>,
    runner: &Runner,
    repo: &crate::store::Repo,
    leased: Stage,
) -> Result<Option<Lease>, QueueError> {
    let now = crate::now_ms();
    let (lease, build) = match lease_for(state, repo, &leased).await {
        Ok(made) => made,
        Err(message) => {
            fail_leased(state, &leased, &message).await?;
            return Ok(None);
        }
    };
    // Only a pending build starts: one cancelled meanwhile stays finished.
    if build.status == Status::Pending && state.store.start_build(build.id, now).await? {
        let started = crate::store::Build {
            status: Status::Running,
            started: Some(now),
            ..build
        };
        builds::publish_build(state, &started);
        state.running_builds.insert(started.id, started);
    }
    state.leased.insert(
        leased.id,
        LeasedStage {
            runner_id: runner.id,
            key: StageKey::from(&leased),
        },
    );
    builds::publish_stage(state, &leased, Status::Running).await;
    tracing::info!(
        "stage {} ({}) attempt {} leased to runner {}",
        leased.id,
        lease.title,
        leased.attempt,
        runner.name
    );
    Ok(Some(lease))
}

/// Ends a stage just leased that cannot run, with `message`.
async fn fail_leased(
    state: &Arc<AppState>,
    leased: &Stage,
    message: &str,
) -> Result<(), QueueError> {
    tracing::error!("stage {}: {message}", leased.id);
    // It may have been given a registry token before it failed.
    revoke_pipeline_tokens(state, leased.id).await?;
    let now = crate::now_ms();
    state
        .store
        .finish_stage(
            leased.id,
            Some(leased.attempt),
            Status::Error,
            Some(message),
            now,
        )
        .await?;
    builds::publish_stage(state, leased, Status::Error).await;
    builds::settle(state, leased.build_id).await?;
    Ok(())
}

/// Everything a runner needs for one leased stage, and the stage's build as read for it.
async fn lease_for(
    state: &Arc<AppState>,
    repo: &crate::store::Repo,
    stage: &Stage,
) -> Result<(Lease, crate::store::Build), String> {
    let mut pipeline: PipelinePlan = serde_json::from_value(stage.plan.clone())
        .map_err(|e| format!("the stored plan is unreadable: {e}"))?;
    // Dependencies between stages are the server's business.
    pipeline.depends_on.clear();
    let build = match state.running_builds.get(stage.build_id) {
        Some(build) => build,
        None => state
            .store
            .build(stage.build_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("build {} is gone", stage.build_id))?,
    };
    let trust = builds::Trust::of_build(repo, &build);
    if pipeline.kind == PipelineType::Exec && !trust.is_trusted() {
        // Refused when the build was made; a stored stage must not slip through either.
        return Err(format!(
            "pipeline `{}` is `type: exec`, which only trusted builds may run",
            pipeline.name
        ));
    }
    let pull_request = trust.is_pull_request();

    let wanted: Vec<&str> = pipeline
        .steps
        .iter()
        .chain(&pipeline.services)
        .flat_map(|s| s.secrets.iter().map(|r| r.secret.as_str()))
        .collect();
    let mut secrets = BTreeMap::new();
    if !wanted.is_empty() {
        for row in state
            .store
            .secrets(repo.id)
            .await
            .map_err(|e| e.to_string())?
        {
            if !wanted.contains(&row.name.as_str()) {
                continue;
            }
            if pull_request && !row.allow_pull_request {
                continue;
            }
            let value = state
                .secrets
                .open(&row.ciphertext, &builds::secret_aad(repo.id, &row.name))
                .map_err(|e| format!("secret `{}` does not decrypt: {e}", row.name))?;
            secrets.insert(row.name, value);
        }
    }
    let workspace = if pipeline.clone.disable {
        WorkspaceSpec::Empty
    } else {
        WorkspaceSpec::Git {
            url: repo.clone_url.clone(),
            reference: build.reference.clone(),
            commit: build.commit.clone(),
        }
    };
    // Only a trusted build publishes images: a pull request or an untrusted repository
    // gets no credential that could overwrite what trusted builds publish (its images stay
    // on the runner under build-scoped names, see the engine).
    let registry = if needs_registry(&pipeline) && trust.is_trusted() {
        let access = pipeline_registry_access(state, repo, stage)
            .await
            .map_err(|e| format!("making the stage's registry token: {e}"))?;
        secrets.insert(REGISTRY_USER_SECRET.to_owned(), access.username.clone());
        secrets.insert(REGISTRY_PASSWORD_SECRET.to_owned(), access.password.clone());
        Some(access)
    } else {
        None
    };
    let cache_scope = if pull_request {
        format!("repo-{}-pr", repo.id)
    } else {
        format!("repo-{}", repo.id)
    };
    let lease = Lease {
        registry,
        cache_scope: Some(cache_scope),
        native_plugins: state.config.native_plugins,
        stage_id: stage.id,
        attempt: u32::try_from(stage.attempt).unwrap_or(u32::MAX),
        title: format!("{}#{} {}", repo.name, build.number, stage.name),
        plan: Plan {
            pipelines: vec![pipeline],
        },
        workspace,
        secrets,
        trusted: trust.is_trusted(),
        step_timeout_secs: None,
        stage_timeout_secs: None,
    };
    Ok((lease, build))
}

/// The secrets a step can name to log in to the server's registry with the stage's token.
pub const REGISTRY_USER_SECRET: &str = "slipway_registry_username";
pub const REGISTRY_PASSWORD_SECRET: &str = "slipway_registry_password";

/// Whether a stage pushes images: a `plugins/docker` step, or a step naming the registry
/// secrets. Only those stages get a registry token.
fn needs_registry(pipeline: &PipelinePlan) -> bool {
    pipeline.steps.iter().any(|s| {
        let image = s.image.trim_start_matches("docker.io/");
        image == "plugins/docker"
            || image.starts_with("plugins/docker:")
            || image.starts_with("plugins/docker@")
            || s.secrets
                .iter()
                .any(|r| r.secret == REGISTRY_PASSWORD_SECRET)
    })
}

/// The name of the token a stage's attempt pushes with; revoked when the attempt ends.
fn pipeline_token_name(stage_id: i64, attempt: i64) -> String {
    format!("pipeline:{stage_id}:{attempt}")
}

/// A token that may pull and push the repository's own path (`team/app` and below it,
/// never `team/other`) and the paths its `registry_paths` setting adds, for this attempt of
/// the stage only: it is deleted when the attempt ends, and the registry's bearer tokens
/// made from it die with it.
async fn pipeline_registry_access(
    state: &AppState,
    repo: &crate::store::Repo,
    stage: &Stage,
) -> Result<RegistryAccess, StoreError> {
    let mut paths = vec![repo.name.to_lowercase()];
    paths.extend(repo.registry_paths.iter().cloned());
    let secret = crate::auth::generate();
    state
        .store
        .create_token(
            &pipeline_token_name(stage.id, stage.attempt),
            &crate::auth::hash(&secret),
            &crate::auth::paths_scope(&paths),
            crate::now_ms(),
        )
        .await?;
    state
        .tokened_stages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(stage.id);
    Ok(RegistryAccess {
        host: state.host.clone(),
        username: format!("pipeline-{}", stage.id),
        password: secret,
    })
}

/// Revokes the registry tokens of a stage (every attempt), once it stops running.
pub async fn revoke_pipeline_tokens(state: &AppState, stage_id: i64) -> Result<(), StoreError> {
    let had = state
        .tokened_stages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&stage_id);
    if had {
        state
            .store
            .delete_tokens_named(&format!("pipeline:{stage_id}:"))
            .await?;
        // The registry's bearer tokens made from it are checked against the cache's live
        // ids: forget them, so those tokens fail from the next request on.
        state.tokens.clear();
    }
    Ok(())
}

/// The stage, if `runner_id` holds its lease for `attempt`.
pub(crate) async fn leased(
    state: &AppState,
    stage_id: i64,
    runner_id: i64,
    attempt: u32,
) -> Result<Stage, QueueError> {
    let attempt = i64::from(attempt);
    let lost = QueueError::LeaseLost {
        stage: stage_id,
        attempt,
    };
    match state.store.stage_state(stage_id).await? {
        Some(stage) if holds(&stage, runner_id, attempt) => Ok(stage),
        _ => Err(lost),
    }
}

/// Whether `runner_id` holds the lease of `stage` for `attempt`.
fn holds(stage: &Stage, runner_id: i64, attempt: i64) -> bool {
    stage.status == Status::Running
        && stage.attempt == attempt
        && stage.runner_id == Some(runner_id)
}

/// Extends the lease; answers whether the build was cancelled.
pub async fn heartbeat(
    state: &AppState,
    stage_id: i64,
    runner_id: i64,
    attempt: u32,
) -> Result<bool, QueueError> {
    let expires = crate::now_ms() + millis(state.config.lease);
    match state
        .store
        .renew_lease(stage_id, i64::from(attempt), runner_id, expires)
        .await?
    {
        Some(cancel) => Ok(cancel),
        None => Err(QueueError::LeaseLost {
            stage: stage_id,
            attempt: i64::from(attempt),
        }),
    }
}

/// Applies a batch of step states and log lines. Logs are stored (appended to files, or
/// a short step's whole log committed with the batch's writes) when this returns.
pub async fn events(
    state: &AppState,
    stage_id: i64,
    batch: EventBatch,
) -> Result<BatchAck, QueueError> {
    let stage = leased(state, stage_id, batch.runner_id, batch.attempt).await?;
    let key = StageKey::from(&stage);
    let report = take_events(state, &key, batch.events).await?;
    state
        .store
        .write_report(stage.build_id, stage.id, &report.writes)
        .await?;
    report.publish(state, &key).await?;
    // Heartbeats renew the lease; a batch only reads it, so logs cost no extra writes.
    Ok(BatchAck {
        cancel: stage.cancel_requested,
    })
}

/// What a batch of events does once its appended log lines are on disk: the store writes
/// (one transaction, with any short step's whole log) and, after them, what live pages
/// are told.
struct Report {
    writes: Vec<ReportWrite>,
    notices: Vec<Notice>,
}

enum Notice {
    Started {
        step: String,
        time: i64,
    },
    /// A short step's whole log, stored with the report (see [`whole_logs`]).
    Lines {
        step: String,
        lines: Vec<String>,
    },
    Finished {
        step: String,
        status: Status,
        exit_code: Option<i64>,
        time: i64,
    },
}

fn log_key(stage: &StageKey, step: String) -> LogKey {
    LogKey {
        build_id: stage.build_id,
        stage_id: stage.id,
        attempt: stage.attempt,
        step,
    }
}

/// The steps of a batch whose whole log is in it, to be stored with the batch's writes
/// rather than appended to files ([`LogStore::may_store_whole`]): each ends in the batch,
/// and its lines in the batch start at its first line, follow on without a gap, hold no
/// NUL, and all come before its end.
fn whole_logs(state: &AppState, stage: &StageKey, events: &[StageEvent]) -> HashSet<String> {
    // Per step: the next line number expected, the bytes so far, whether it still qualifies.
    let mut seen: HashMap<&str, (u64, usize, bool)> = HashMap::new();
    let mut whole = HashSet::new();
    for event in events {
        match event {
            StageEvent::Log {
                step,
                first_seq,
                lines,
            } => {
                let entry = seen.entry(step.as_str()).or_insert((0, 0, true));
                // PostgreSQL's text holds no NUL; a file holds any line.
                entry.2 &= *first_seq == entry.0 && !lines.iter().any(|l| l.line.contains('\0'));
                entry.0 = first_seq + lines.len() as u64;
                entry.1 += lines.iter().map(|l| l.line.len() + 1).sum::<usize>();
            }
            StageEvent::StepFinished { step, .. } => {
                let (_, bytes, contiguous) = seen.remove(step.as_str()).unwrap_or((0, 0, true));
                if contiguous
                    && bytes > 0
                    && state
                        .logs
                        .may_store_whole(&log_key(stage, step.clone()), bytes)
                {
                    whole.insert(step.clone());
                }
            }
            _ => {}
        }
    }
    // A step whose lines come after its end in the batch is not whole here.
    whole.retain(|step| !seen.contains_key(step.as_str()));
    whole
}

/// Appends a batch's log lines, in order, and turns the rest into a [`Report`]. A step
/// that starts and ends within the batch (a short step) is one write, and its log is
/// stored with it ([`whole_logs`]).
async fn take_events(
    state: &AppState,
    stage: &StageKey,
    events: Vec<StageEvent>,
) -> Result<Report, QueueError> {
    let ending: HashSet<String> = events
        .iter()
        .filter_map(|e| match e {
            StageEvent::StepFinished { step, .. } => Some(step.clone()),
            _ => None,
        })
        .collect();
    let whole = whole_logs(state, stage, &events);
    let mut gathered: HashMap<String, Vec<String>> = HashMap::new();
    let mut starts = BTreeMap::new();
    let mut report = Report {
        writes: Vec::new(),
        notices: Vec::new(),
    };
    for event in events {
        match event {
            StageEvent::StepStarted { step, time } => {
                if ending.contains(&step) {
                    starts.insert(step.clone(), time);
                } else {
                    report.writes.push(ReportWrite::Step {
                        name: step.clone(),
                        update: StepUpdate {
                            status: Status::Running,
                            exit_code: None,
                            error: None,
                            started: Some(time),
                            finished: None,
                        },
                    });
                }
                report.notices.push(Notice::Started { step, time });
            }
            StageEvent::Log {
                step,
                first_seq,
                lines,
            } => {
                let lines = lines.into_iter().map(|l| l.line);
                if whole.contains(&step) {
                    // As stored, so live followers see what a later read gives.
                    let lines = lines.map(crate::logstore::one_line);
                    gathered.entry(step).or_default().extend(lines);
                } else {
                    let key = log_key(stage, step);
                    state.logs.append(&key, first_seq, lines.collect()).await?;
                }
            }
            StageEvent::Artifact {
                image,
                tags,
                digest,
                ..
            } => {
                let now = crate::now_ms();
                let names = if tags.is_empty() {
                    vec![format!("{image}@{digest}")]
                } else {
                    tags.iter().map(|tag| format!("{image}:{tag}")).collect()
                };
                for image in names {
                    report.writes.push(ReportWrite::Artifact {
                        image,
                        digest: digest.clone(),
                        now,
                    });
                }
            }
            StageEvent::StepFinished {
                step,
                status,
                exit_code,
                time,
                error,
            } => {
                if let Some(lines) = gathered.remove(&step) {
                    report.writes.push(ReportWrite::Log {
                        step: step.clone(),
                        attempt: stage.attempt,
                        text: crate::logstore::log_text(&lines),
                    });
                    report.notices.push(Notice::Lines {
                        step: step.clone(),
                        lines,
                    });
                }
                report.writes.push(ReportWrite::Step {
                    name: step.clone(),
                    update: StepUpdate {
                        status,
                        exit_code,
                        error,
                        started: starts.remove(&step),
                        finished: Some(time),
                    },
                });
                report.notices.push(Notice::Finished {
                    step,
                    status,
                    exit_code,
                    time,
                });
            }
        }
    }
    Ok(report)
}

impl Report {
    /// Tells live pages what the stored writes changed, in the order it happened.
    async fn publish(self, state: &AppState, stage: &StageKey) -> Result<(), QueueError> {
        for notice in self.notices {
            match notice {
                Notice::Lines { step, lines } => {
                    state.logs.publish(log_key(stage, step), 0, lines);
                }
                Notice::Started { step, time } => {
                    state
                        .step_starts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((stage.id, step.clone()), time);
                    // A start is all the step has so far: no need to read it back.
                    state.events.publish(ServerEvent::Step {
                        build_id: stage.build_id,
                        stage: stage.number,
                        step,
                        status: Status::Running,
                        exit_code: None,
                        started: Some(time),
                        finished: None,
                    });
                }
                Notice::Finished {
                    step,
                    status,
                    exit_code,
                    time,
                } => {
                    let started = state
                        .step_starts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&(stage.id, step.clone()));
                    match started {
                        Some(started) => state.events.publish(ServerEvent::Step {
                            build_id: stage.build_id,
                            stage: stage.number,
                            step: step.clone(),
                            status,
                            exit_code,
                            started: Some(started),
                            finished: Some(time),
                        }),
                        // Started before a server restart: the store knows when.
                        None => publish_step(state, stage, &step).await?,
                    }
                    state.logs.close(&LogKey {
                        build_id: stage.build_id,
                        stage_id: stage.id,
                        attempt: stage.attempt,
                        step,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Publishes the step as stored now (an update carries only what changed: a finish has no
/// start time, but a live page needs both).
async fn publish_step(state: &AppState, stage: &StageKey, step: &str) -> Result<(), QueueError> {
    let steps = state.store.steps(stage.id).await?;
    if let Some(row) = steps.into_iter().find(|s| s.name == step) {
        state.events.publish(ServerEvent::Step {
            build_id: stage.build_id,
            stage: stage.number,
            step: row.name,
            status: row.status,
            exit_code: row.exit_code,
            started: row.started,
            finished: row.finished,
        });
    }
    Ok(())
}

/// Drops the remembered start times of a stage's steps (it ended or went back to the
/// queue).
fn forget_step_starts(state: &AppState, stage_id: i64) {
    state
        .step_starts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(stage, _), _| *stage != stage_id);
}

/// The runner's final word on a stage, with its last events. Repeating it (a lost
/// acknowledgement) is harmless: an ended stage is not touched again. `next_for` is the
/// runner when it asked for its next stage ([`StageDone::next`]): if the head of the queue
/// is one it may take, that stage is leased to it in the same transaction and returned, to
/// be handed out with [`hand_out_head`].
pub async fn done(
    state: &Arc<AppState>,
    stage_id: i64,
    done: StageDone,
    next_for: Option<&Runner>,
) -> Result<Option<Stage>, QueueError> {
    let attempt = i64::from(done.attempt);
    let now = crate::now_ms();
    if !done.status.is_done() {
        return Err(QueueError::BadReport(format!(
            "a stage cannot end `{}`: report success, failure, killed, error or skipped",
            done.status
        )));
    }
    let lost = QueueError::LeaseLost {
        stage: stage_id,
        attempt,
    };
    // Only the runner holding the stage may end it; a resent report of its own end is
    // answered as the first was. A lease this process handed out to this runner for this
    // attempt needs no read: the end below checks it again.
    let current = match state.leased.get(stage_id) {
        Some(held) if held.runner_id == done.runner_id && held.key.attempt == attempt => held.key,
        _ => {
            let Some(current) = state.store.stage_state(stage_id).await? else {
                return Err(lost);
            };
            if current.attempt == attempt && current.status.is_done() {
                return Ok(None);
            }
            if !holds(&current, done.runner_id, attempt) {
                return Err(lost);
            }
            StageKey::from(&current)
        }
    };
    let mut report = take_events(state, &current, done.events).await?;
    let end = LeasedEnd {
        stage_id,
        attempt,
        runner_id: done.runner_id,
        status: done.status,
        error: done.error,
        writes: std::mem::take(&mut report.writes),
        now,
        next: next_for.map(|runner| HeadLease {
            labels: runner.labels.clone(),
            lease_expires: now + millis(state.config.lease),
        }),
    };
    let Some(ended) = state.store.end_leased_stage(end).await? else {
        // Ended meanwhile (the lease expired just now, or a cancel finished it), or ended by
        // this very report before (a resend).
        // Kept before the lease entry goes: should this fail, the resent `/done` comes
        // back this way and tries again, rather than being answered as already ended.
        keep_whole_logs_of_refused_end(state, &current, &report).await?;
        state.leased.remove(stage_id);
        state.logs.close_stage(stage_id, attempt);
        return match state.store.stage_state(stage_id).await? {
            Some(stage) if stage.attempt == attempt && stage.status.is_done() => Ok(None),
            _ => Err(lost),
        };
    };
    let EndedStage {
        stage,
        closed,
        next,
    } = ended;
    state.leased.remove(stage_id);
    report.publish(state, &current).await?;
    state.logs.close_stage(stage_id, attempt);
    forget_step_starts(state, stage_id);
    revoke_pipeline_tokens(state, stage_id).await?;
    tracing::info!(
        "stage {stage_id} attempt {attempt} finished: {}",
        done.status
    );
    // Steps the runner never reported (it gave up half-way) were closed; usually none.
    builds::publish_stage_with_steps(state, &stage, done.status, closed, now);
    builds::settle(state, stage.build_id).await?;
    state.queue.notify_waiters();
    Ok(next)
}

/// The whole logs a refused end carried were not written with it: they go to files, as
/// any log of an attempt that lost its lease does, unless a first delivery of this same
/// end stored them already.
async fn keep_whole_logs_of_refused_end(
    state: &AppState,
    stage: &StageKey,
    report: &Report,
) -> Result<(), QueueError> {
    for notice in &report.notices {
        if let Notice::Lines { step, lines } = notice {
            let stored = state.store.step_log(stage.id, stage.attempt, step).await?;
            if stored.is_none() {
                let key = log_key(stage, step.clone());
                state.logs.append(&key, 0, lines.clone()).await?;
                state.logs.close(&key);
            }
        }
    }
    Ok(())
}

/// Every second: stages whose runner stopped heartbeating go back to the queue, or fail
/// after their last attempt.
pub async fn reap_expired_leases(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = reap_once(&state).await {
            tracing::warn!("checking leases: {e}");
        }
    }
}

async fn reap_once(state: &Arc<AppState>) -> Result<(), QueueError> {
    let now = crate::now_ms();
    for stage in state.store.expired_leases(now).await? {
        if stage.attempt < state.config.max_attempts && !stage.cancel_requested {
            if state
                .store
                .requeue_stage(stage.id, stage.attempt, now)
                .await?
            {
                state.logs.close_stage(stage.id, stage.attempt);
                forget_step_starts(state, stage.id);
                state.leased.remove(stage.id);
                revoke_pipeline_tokens(state, stage.id).await?;
                tracing::warn!(
                    "stage {} attempt {}: the runner stopped answering; queued again",
                    stage.id,
                    stage.attempt
                );
                builds::publish_stage(state, &stage, Status::Pending).await;
                state.queue.notify_waiters();
            }
        } else {
            let (status, message) = if stage.cancel_requested {
                (
                    Status::Killed,
                    "cancelled; the runner stopped answering".to_owned(),
                )
            } else {
                (
                    Status::Error,
                    format!(
                        "the runner stopped answering (lease expired) on attempt {} of {}",
                        stage.attempt, state.config.max_attempts
                    ),
                )
            };
            if state
                .store
                .finish_stage(stage.id, Some(stage.attempt), status, Some(&message), now)
                .await?
            {
                tracing::warn!("stage {}: {message}", stage.id);
                state.logs.close_stage(stage.id, stage.attempt);
                forget_step_starts(state, stage.id);
                state.leased.remove(stage.id);
                revoke_pipeline_tokens(state, stage.id).await?;
                builds::publish_stage(state, &stage, status).await;
                builds::settle(state, stage.build_id).await?;
            }
        }
    }
    Ok(())
}
