//! Builds from start to end: created from a webhook, a manual run, a restart or a
//! promotion (mirror fetch, pipeline file at the commit, compile, store); stages settled
//! as their dependencies finish; the build finished when its last stage is; cancelled on
//! request; its state posted back to the git host.
//!
//! Invariants:
//! - A build is stored whole (see [`crate::store`]); a pipeline file that does not fetch,
//!   is missing or does not compile gives a build in state `error` whose `error` says why
//!   (lint messages as `FILE:LINE:COL: error: …`), and nothing else is affected.
//! - [`settle`] is the one place that decides what happens to stages whose dependencies are
//!   done and to a build whose stages are all done; every path that finishes a stage calls
//!   it, so a build cannot be left hanging.

use std::collections::BTreeMap;
use std::sync::Arc;

use slipway_engine::Status;
use slipway_spec::plan::{PipelinePlan, PipelineType, RunOn};
use slipway_spec::{BuildContext, BuildEvent};
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::events::ServerEvent;
use crate::status::{CommitState, StatusTarget};
use crate::store::{Build, CompiledBuild, NewBuild, NewStage, Repo, Stage, StoreError};
use crate::webhook::Provider;

/// Pipeline files looked for when a repository names none.
pub const DEFAULT_CONFIG_PATHS: &[&str] = &[".slipway.yml", ".drone.yml"];

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("build #{0} is still running; cancel it first")]
    StillRunning(i64),
    #[error("{0}")]
    Invalid(String),
}

/// What starts a build, besides the repository.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// Filled from the hook or the manual form; the rest (number, links, system, repo
    /// fields, changed files) is added here.
    pub context: BuildContext,
    pub delivery_id: Option<String>,
    /// The SHA-256 (hex) of the webhook body, for builds from a webhook: see
    /// [`crate::store::REPLAY_WINDOW_MS`].
    pub body_digest: Option<String>,
    /// Who or what: `@hook`, `@admin`, ...
    pub trigger: String,
    /// The mirror was fetched for this request already (a manual run resolves its ref in
    /// it first), so it is not fetched again.
    pub fetched: bool,
}

/// Creates (and queues) a build of `repo` for `request`.
pub async fn create(
    state: &Arc<AppState>,
    repo: &Repo,
    request: BuildRequest,
) -> Result<Build, BuildError> {
    let mut ctx = request.context;
    ctx.repo = repo.name.clone();
    ctx.clone_url = repo.clone_url.clone();
    if ctx.default_branch.is_empty() {
        ctx.default_branch = repo.default_branch.clone();
    }
    ctx.instance = state.host.clone();
    ctx.system_proto = state
        .config
        .public_url
        .split_once("://")
        .map_or("http", |(p, _)| p)
        .to_owned();
    ctx.trigger = request.trigger.clone();
    let now = crate::now_ms();
    ctx.created = now / 1000;
    ctx.started = now / 1000;

    // Fetch first: the pipeline file and the changed files come from the mirror. Branches
    // and tags always come; a pull request's ref is fetched besides. A build of a bare
    // commit (a manual run, or its restart) names no ref: its commit is on a branch or tag.
    let extra: Vec<&str> = [ctx.reference.as_str()]
        .into_iter()
        .filter(|r| {
            r.starts_with("refs/") && !r.starts_with("refs/heads/") && !r.starts_with("refs/tags/")
        })
        .collect();
    let fetched = if request.fetched {
        Ok(())
    } else {
        state.mirrors.fetch(repo.id, &repo.clone_url, &extra).await
    };
    let file = match fetched {
        Err(e) => Err(format!("could not fetch the repository: {e}")),
        Ok(()) => read_pipeline_file(state, repo, &ctx.commit).await,
    };
    if file.is_ok() && ctx.changed_files.is_none() {
        match state
            .mirrors
            .changed_files(repo.id, &ctx.before, &ctx.commit)
            .await
        {
            Ok(files) => ctx.changed_files = files,
            Err(e) => tracing::warn!("{}: changed files unknown: {e}", repo.name),
        }
    }

    let new = NewBuild {
        repo_id: repo.id,
        event: ctx.event.as_str().to_owned(),
        reference: ctx.reference.clone(),
        branch: ctx.branch.clone(),
        commit: ctx.commit.clone(),
        message: ctx.message.clone(),
        author: if ctx.author.is_empty() {
            ctx.author_name.clone()
        } else {
            ctx.author.clone()
        },
        trigger: request.trigger.clone(),
        deploy_to: ctx.target.clone(),
        delivery_id: request.delivery_id.clone(),
        body_digest: request.body_digest.clone(),
    };
    let public_url = state.config.public_url.trim_end_matches('/').to_owned();
    let repo_name = repo.name.clone();
    let trust = Trust::of(repo, &ctx);
    let (build, stages) = state
        .store
        .create_build(&new, move |number| {
            ctx.build_number = u64::try_from(number).unwrap_or_default();
            ctx.build_link = format!("{public_url}/repos/{repo_name}/builds/{number}");
            compile_build(&ctx, file, trust)
        })
        .await?;
    tracing::info!(
        "{}#{}: {} {} ({} stages, {})",
        repo.name,
        build.number,
        build.event,
        build.reference,
        stages.len(),
        build.status
    );
    for stage in stages.iter().filter(|s| s.status == Status::Skipped) {
        // Its trigger did not match: its steps will never run.
        state.store.finish_open_steps(stage.id, now).await?;
    }
    publish_build(state, &build);
    if build.status == Status::Pending {
        if repo.auto_cancel && build.event == "push" {
            auto_cancel(state, repo, &build).await;
        }
        settle(state, build.id).await?;
        state.queue.notify_waiters();
    }
    Ok(build)
}

/// The pipeline file at `commit`: the repository's configured path, else the defaults.
async fn read_pipeline_file(
    state: &AppState,
    repo: &Repo,
    commit: &str,
) -> Result<(String, String), String> {
    let candidates: Vec<&str> = match &repo.config_path {
        Some(path) if !path.trim().is_empty() => vec![path.as_str()],
        _ => DEFAULT_CONFIG_PATHS.to_vec(),
    };
    match state
        .mirrors
        .read_first_file(repo.id, commit, &candidates)
        .await
    {
        Ok(Some((path, text))) => return Ok((path.to_owned(), text)),
        Ok(None) => {}
        Err(e) => {
            return Err(format!(
                "could not read {} at {commit}: {e}",
                candidates.join(" or ")
            ));
        }
    }
    Err(format!(
        "no pipeline file at commit {commit}: looked for {}",
        candidates.join(", ")
    ))
}

/// How far a build's change is trusted: the powers over the runner's host (`type: exec`,
/// host volumes, `privileged`, `docker.sock`) are only for the pushes, tags and manual
/// runs of a trusted repository. A pull request never has them, whatever the
/// repository's trust, and neither do its restarts and promotions (they keep its
/// `pull_request` number in their context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Trusted,
    PullRequest,
    UntrustedRepository,
}

impl Trust {
    pub fn of(repo: &Repo, ctx: &BuildContext) -> Trust {
        Trust::given(
            repo,
            ctx.event == BuildEvent::PullRequest || ctx.pull_request.is_some(),
        )
    }

    /// [`Trust::of`] a stored build. Read on every lease, so only the context's
    /// `pull_request` field is looked at, not the whole context decoded.
    pub fn of_build(repo: &Repo, build: &Build) -> Trust {
        let pull_request = build
            .context
            .get("pull_request")
            .is_some_and(|n| !n.is_null());
        Trust::given(repo, build.event == "pull_request" || pull_request)
    }

    fn given(repo: &Repo, from_pull_request: bool) -> Trust {
        if from_pull_request {
            Trust::PullRequest
        } else if repo.trusted {
            Trust::Trusted
        } else {
            Trust::UntrustedRepository
        }
    }

    pub fn is_trusted(self) -> bool {
        self == Trust::Trusted
    }

    pub fn is_pull_request(self) -> bool {
        self == Trust::PullRequest
    }
}

/// The label a `type: exec` stage asks for, which only runners started with
/// `--allow-exec` are given by the server (runners may not set `slipway.*` labels).
pub const EXEC_LABEL: (&str, &str) = ("slipway.exec", "allowed");

/// Why a `type: exec` pipeline may not run for this build, if it may not.
fn exec_refusal(pipeline: &str, repo: &str, trust: Trust) -> Option<String> {
    let why = match trust {
        Trust::Trusted => return None,
        Trust::PullRequest => "this build comes from a pull request, whose code is never run on a runner's host (whatever the repository's trust)".to_owned(),
        Trust::UntrustedRepository => format!(
            "the repository `{repo}` is not trusted (an admin can mark it trusted in its settings; its pushes' exec pipelines then run on runners started with `--allow-exec`)"
        ),
    };
    Some(format!(
        "pipeline `{pipeline}` is `type: exec`, which runs its commands directly on the runner's host: refused because {why}"
    ))
}

/// The stages of a build from its pipeline file (or why there are none).
fn compile_build(
    ctx: &BuildContext,
    file: Result<(String, String), String>,
    trust: Trust,
) -> CompiledBuild {
    let context = serde_json::to_value(ctx).unwrap_or_default();
    let error_build = |message: String| CompiledBuild {
        status: Status::Error,
        error: Some(message),
        context: context.clone(),
        stages: Vec::new(),
    };
    let (path, text) = match file {
        Ok(file) => file,
        Err(message) => return error_build(message),
    };
    let compiled = match slipway_spec::compile(&text, ctx) {
        Ok(compiled) => compiled,
        Err(diags) => {
            let lines: Vec<String> = diags
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.render(&path))
                .collect();
            return error_build(lines.join("\n"));
        }
    };
    let refusals: Vec<String> = compiled
        .plan
        .pipelines
        .iter()
        .filter(|p| p.kind == PipelineType::Exec && !p.skipped)
        .filter_map(|p| exec_refusal(&p.name, &ctx.repo, trust))
        .collect();
    if !refusals.is_empty() {
        return error_build(refusals.join("\n"));
    }
    let stages: Vec<NewStage> = compiled
        .plan
        .pipelines
        .iter()
        .map(|p| NewStage {
            name: p.name.clone(),
            // A stage that depends on nothing sees a build that is not failing: its
            // `trigger: status` is decided now, so settling never has to read its plan.
            status: if p.skipped || (p.depends_on.is_empty() && !p.run_on.success) {
                Status::Skipped
            } else {
                Status::Pending
            },
            depends_on: p.depends_on.clone(),
            labels: stage_labels(p),
            plan: serde_json::to_value(p).unwrap_or_default(),
            steps: step_names(p),
        })
        .collect();
    let status = if stages.iter().all(|s| s.status == Status::Skipped) {
        Status::Skipped
    } else {
        Status::Pending
    };
    CompiledBuild {
        status,
        error: None,
        context,
        stages,
    }
}

/// The runner labels a stage asks for: its pipeline's, and for `type: exec` the one only
/// runners that allow exec have.
fn stage_labels(p: &PipelinePlan) -> BTreeMap<String, String> {
    let mut labels = p.labels.clone();
    if p.kind == PipelineType::Exec {
        labels.insert(EXEC_LABEL.0.to_owned(), EXEC_LABEL.1.to_owned());
    }
    labels
}

/// `clone` (unless disabled), services, then steps: the order the engine reports them in.
pub fn step_names(p: &PipelinePlan) -> Vec<String> {
    let mut names = Vec::new();
    if !p.clone.disable {
        names.push("clone".to_owned());
    }
    for s in p.services.iter().chain(&p.steps) {
        if !names.contains(&s.name) {
            names.push(s.name.clone());
        }
    }
    names
}

/// Pending builds of the same branch older than `build` are cancelled (repository setting).
async fn auto_cancel(state: &Arc<AppState>, repo: &Repo, build: &Build) {
    match state
        .store
        .pending_builds_on_branch(repo.id, &build.branch, &build.event, build.number)
        .await
    {
        Ok(older) => {
            for old in older {
                tracing::info!(
                    "{}#{}: superseded by #{}, cancelling",
                    repo.name,
                    old.number,
                    build.number
                );
                if let Err(e) = cancel(state, &old).await {
                    tracing::warn!("auto-cancel of {}#{}: {e}", repo.name, old.number);
                }
            }
        }
        Err(e) => tracing::warn!("auto-cancel lookup for {}: {e}", repo.name),
    }
}

/// Stops a build: pending stages are killed at once, running ones are told through their
/// runner's next heartbeat.
pub async fn cancel(state: &Arc<AppState>, build: &Build) -> Result<(), BuildError> {
    state.store.request_cancel(build.id).await?;
    let now = crate::now_ms();
    for stage in state.store.stage_states(build.id).await? {
        if stage.status == Status::Pending
            && state
                .store
                .finish_stage(stage.id, None, Status::Killed, Some("cancelled"), now)
                .await?
        {
            // It may have been leased (and given a registry token) just now.
            crate::queue::revoke_pipeline_tokens(state, stage.id).await?;
            publish_stage(state, &stage, Status::Killed).await;
        }
    }
    settle(state, build.id).await
}

/// Decides stages whose dependencies are done but whose `trigger: status` says not to run
/// (skipped), and finishes the build once every stage is done. Idempotent.
pub async fn settle(state: &Arc<AppState>, build_id: i64) -> Result<(), BuildError> {
    loop {
        // Plans are only read for the few stages whose `run_on` must be decided now, and
        // the stage list only when a dependent stage waits or the build may be done.
        let (open, dependents) = state.store.open_stage_counts(build_id).await?;
        if open > 0 && dependents == 0 {
            return Ok(());
        }
        let stages = state.store.stage_states(build_id).await?;
        let mut changed = false;
        for stage in stages.iter().filter(|s| s.status == Status::Pending) {
            if stage.depends_on.is_empty() {
                // Decided when the build was created (see `compile_build`).
                continue;
            }
            let Some(failed) = dependencies_outcome(&stages, stage) else {
                continue;
            };
            let Some(full) = state.store.stage(stage.id).await? else {
                continue;
            };
            let run_on = run_on_of(&full);
            let runs = if failed {
                run_on.failure
            } else {
                run_on.success
            };
            if !runs {
                let now = crate::now_ms();
                if state
                    .store
                    .finish_stage(stage.id, None, Status::Skipped, None, now)
                    .await?
                {
                    publish_stage(state, stage, Status::Skipped).await;
                    changed = true;
                }
            }
        }
        if !changed {
            if !stages.is_empty() && stages.iter().all(|s| s.status.is_done()) {
                finish_build(state, build_id, &stages).await?;
            }
            return Ok(());
        }
    }
}

/// `None` while a dependency is not done; else whether any of them failed.
pub fn dependencies_outcome(stages: &[Stage], stage: &Stage) -> Option<bool> {
    let mut failed = false;
    for dep in &stage.depends_on {
        if let Some(d) = stages.iter().find(|s| &s.name == dep) {
            if !d.status.is_done() {
                return None;
            }
            failed |= d.status.is_failed();
        }
    }
    Some(failed)
}

fn run_on_of(stage: &Stage) -> RunOn {
    stage
        .plan
        .get("run_on")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Killed beats error beats failure beats success; all skipped is skipped.
pub fn aggregate(stages: &[Stage]) -> Status {
    let has = |s| stages.iter().any(|st| st.status == s);
    if has(Status::Killed) {
        Status::Killed
    } else if has(Status::Error) {
        Status::Error
    } else if has(Status::Failure) {
        Status::Failure
    } else if stages.iter().all(|s| s.status == Status::Skipped) {
        Status::Skipped
    } else {
        Status::Success
    }
}

async fn finish_build(
    state: &Arc<AppState>,
    build_id: i64,
    stages: &[Stage],
) -> Result<(), BuildError> {
    // Every stage is done: nothing more to lease of it.
    state.running_builds.remove(build_id);
    let Some(build) = state.store.build(build_id).await? else {
        return Ok(());
    };
    if build.status.is_done() {
        return Ok(());
    }
    let status = aggregate(stages);
    let now = crate::now_ms();
    // Two settles at once (two stages ending together) finish it once.
    if !state.store.finish_build(build_id, status, now).await? {
        return Ok(());
    }
    if let Some(build) = state.store.build(build_id).await? {
        tracing::info!(
            "build {} #{} finished: {}",
            build.repo_id,
            build.number,
            status
        );
        publish_build(state, &build);
    }
    // Stages of other builds may have waited on this repository's concurrency limit.
    state.queue.notify_waiters();
    Ok(())
}

pub fn publish_build(state: &AppState, build: &Build) {
    state.events.publish(ServerEvent::Build {
        build_id: build.id,
        repo_id: build.repo_id,
        number: build.number,
        status: build.status,
        finished: build.finished,
    });
}

pub async fn publish_stage(state: &AppState, stage: &Stage, status: Status) {
    // Steps may have changed with it (skipped, killed, reset for another attempt); a
    // stage that just started has not touched them.
    let steps = if status == Status::Running {
        Vec::new()
    } else {
        state.store.steps(stage.id).await.unwrap_or_default()
    };
    publish_stage_with_steps(state, stage, status, steps, crate::now_ms());
}

/// Publishes a stage's new status and its `steps` as given. For a stage that just ended
/// from steps read before its open ones were closed, pending ones are published skipped
/// and running ones killed at `now`, as the store now has them, so nothing is read again.
pub fn publish_stage_with_steps(
    state: &AppState,
    stage: &Stage,
    status: Status,
    steps: Vec<crate::store::Step>,
    now: i64,
) {
    state.events.publish(ServerEvent::Stage {
        build_id: stage.build_id,
        stage: stage.number,
        status,
        attempt: stage.attempt,
    });
    let ended = status.is_done();
    for step in steps {
        let (status, finished) = match step.status {
            Status::Pending if ended => (Status::Skipped, step.finished),
            Status::Running if ended => (Status::Killed, Some(now)),
            current => (current, step.finished),
        };
        state.events.publish(ServerEvent::Step {
            build_id: stage.build_id,
            stage: stage.number,
            step: step.name,
            status,
            exit_code: step.exit_code,
            started: step.started,
            finished,
        });
    }
}

/// The context a finished build ran with, for restarts and promotions.
pub fn context_of(build: &Build) -> BuildContext {
    serde_json::from_value(build.context.clone()).unwrap_or_default()
}

/// A new build of the same commit, event and parameters.
pub async fn restart(
    state: &Arc<AppState>,
    repo: &Repo,
    build: &Build,
    user: &str,
) -> Result<Build, BuildError> {
    let mut ctx = context_of(build);
    ctx.parent = u64::try_from(build.number).unwrap_or_default();
    create_by_user(state, repo, ctx, user, false).await
}

/// A build a person asked for (no delivery id; trigger `@user`).
async fn create_by_user(
    state: &Arc<AppState>,
    repo: &Repo,
    context: BuildContext,
    user: &str,
    fetched: bool,
) -> Result<Build, BuildError> {
    create(
        state,
        repo,
        BuildRequest {
            context,
            delivery_id: None,
            body_digest: None,
            trigger: format!("@{user}"),
            fetched,
        },
    )
    .await
}

/// Promotes a finished build to `target` (`promote` event, `DRONE_DEPLOY_TO`).
pub async fn promote(
    state: &Arc<AppState>,
    repo: &Repo,
    build: &Build,
    target: &str,
    params: BTreeMap<String, String>,
    user: &str,
) -> Result<Build, BuildError> {
    if !build.status.is_done() {
        return Err(BuildError::StillRunning(build.number));
    }
    let target = target.trim();
    if target.is_empty() {
        return Err(BuildError::Invalid(
            "a promotion needs a target environment, e.g. `production`".into(),
        ));
    }
    let mut ctx = context_of(build);
    ctx.event = BuildEvent::Promote;
    ctx.target = target.to_owned();
    ctx.parent = u64::try_from(build.number).unwrap_or_default();
    ctx.params.extend(params);
    create_by_user(state, repo, ctx, user, false).await
}

/// What a manual run builds.
#[derive(Debug, Clone)]
pub enum ManualRef {
    Branch(String),
    Tag(String),
    Commit(String),
}

/// "Run pipeline": a `custom` build of a branch, tag or commit with parameters.
pub async fn run_manual(
    state: &Arc<AppState>,
    repo: &Repo,
    what: ManualRef,
    params: BTreeMap<String, String>,
    user: &str,
) -> Result<Build, BuildError> {
    state
        .mirrors
        .fetch(repo.id, &repo.clone_url, &[])
        .await
        .map_err(|e| BuildError::Invalid(format!("could not fetch {}: {e}", repo.clone_url)))?;
    let (rev, reference, branch, tag) = match &what {
        ManualRef::Branch(b) => (
            format!("refs/heads/{b}"),
            format!("refs/heads/{b}"),
            b.clone(),
            None,
        ),
        ManualRef::Tag(t) => (
            format!("refs/tags/{t}"),
            format!("refs/tags/{t}"),
            String::new(),
            Some(t.clone()),
        ),
        ManualRef::Commit(c) => (c.clone(), String::new(), repo.default_branch.clone(), None),
    };
    let info = state
        .mirrors
        .commit_info(repo.id, &rev)
        .await
        .map_err(|e| BuildError::Invalid(format!("unknown {what:?}: {e}")))?;
    let ctx = BuildContext {
        event: BuildEvent::Custom,
        branch,
        tag,
        reference: if reference.is_empty() {
            info.sha.clone()
        } else {
            reference
        },
        commit: info.sha.clone(),
        message: info.message.clone(),
        author: user.to_owned(),
        author_name: info.author_name.clone(),
        author_email: info.author_email.clone(),
        params,
        ..BuildContext::default()
    };
    create_by_user(state, repo, ctx, user, true).await
}

/// Posts build states to the git host of repositories that have a status API configured.
pub async fn post_commit_statuses(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut events = state.events.subscribe();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        let (build_id, repo_id, status) = match event {
            Ok(ServerEvent::Build {
                build_id,
                repo_id,
                status,
                ..
            }) => (build_id, repo_id, status),
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("commit statuses: {n} events missed");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let state = state.clone();
        // One task per post so a slow host does not hold up the others.
        tokio::spawn(async move {
            if let Err(e) = post_status(&state, build_id, repo_id, status).await {
                tracing::warn!("commit status for build {build_id}: {e}");
            }
        });
    }
}

async fn post_status(
    state: &AppState,
    build_id: i64,
    repo_id: i64,
    status: Status,
) -> Result<(), String> {
    let Some(repo) = state.store.repo(repo_id).await.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let (Some(url), Some(sealed)) = (&repo.status_url, &repo.status_token) else {
        return Ok(());
    };
    let Some(build) = state
        .store
        .build(build_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let Some(provider) = Provider::parse(&repo.provider) else {
        return Ok(());
    };
    let token = state
        .secrets
        .open(sealed, &status_token_aad(repo.id))
        .map_err(|e| e.to_string())?;
    let (commit_state, description) = match status {
        Status::Pending => (CommitState::Pending, "The build is pending"),
        Status::Running => (CommitState::Running, "The build is running"),
        Status::Success => (CommitState::Success, "The build succeeded"),
        Status::Failure => (CommitState::Failure, "The build failed"),
        Status::Killed => (CommitState::Killed, "The build was cancelled"),
        Status::Error => (CommitState::Error, "The build could not run"),
        Status::Skipped => return Ok(()),
    };
    let target = StatusTarget {
        provider,
        api_base: url.clone(),
        token,
        repo: repo.name.clone(),
    };
    let link = format!(
        "{}/repos/{}/builds/{}",
        state.config.public_url.trim_end_matches('/'),
        repo.name,
        build.number
    );
    let context = format!("slipway/{}", build.event);
    state
        .statuses
        .post(
            &target,
            &build.commit,
            commit_state,
            &link,
            description,
            &context,
        )
        .await
        .map_err(|e| e.to_string())
}

/// Binds a repository's sealed status token to that repository.
pub fn status_token_aad(repo_id: i64) -> String {
    format!("repo:{repo_id}:status-token")
}

/// Binds a sealed secret to its repository and name.
pub fn secret_aad(repo_id: i64, name: &str) -> String {
    format!("repo:{repo_id}:secret:{name}")
}
