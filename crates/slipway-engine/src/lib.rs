//! Runs a compiled pipeline [`Plan`]: the workspace and its clone,
//! networks, volumes, services, steps in dependency order, time limits, cancellation and
//! cleanup, with every log line masked.
//!
//! The entry point is [`run`]: it takes the plan, [`RunOptions`] (workspace source, secrets,
//! trust, cancellation, time limits) and an [`EventSink`] that receives [`Event`]s (pipeline
//! and step starts and ends, masked log lines) while the build runs, and returns a
//! [`BuildReport`]. A step that fails is not an error: it is a [`Status::Failure`] in the
//! report; [`EngineError`] is for what kept the engine from running at all.
//!
//! How it is organised:
//! - `scheduler`: pipelines by their `depends_on`, steps by theirs, in parallel where
//!   allowed; `run_on` (Drone's `status` condition) decided as each step becomes ready; step,
//!   pipeline and build time limits; cancellation; pre-starting steps.
//! - `backend`: the `Backend` trait and its two implementations, `docker` (containers via
//!   bollard, for `type: docker`) and `host` (processes, for `type: exec`).
//! - `workspace`: the per-pipeline host directory and the git clone, reported as the
//!   pseudo-step `clone`.
//! - `native`: native plugins. A Docker-pipeline step with `image: plugins/docker` and no
//!   `commands` is run by the engine itself when [`RunOptions::native_plugins`] is on: the
//!   workspace's build context (minus `.dockerignore`) streamed as a tar to the engine's
//!   build API, tagged, pushed with the step's credentials (or
//!   [`RunOptions::own_registry`]'s for the server's registry), reported as
//!   [`Event::Artifact`]. The notification plugins `clem109/drone-wechat`,
//!   `lizheming/drone-wechat`, `plugins/slack`, `plugins/webhook`,
//!   `appleboy/drone-telegram`, `appleboy/drone-discord`, `drone-plugins/drone-email` and
//!   `lddsb/drone-dingtalk-message` are sent with `slipway-notify` (API bases from
//!   [`RunOptions::notify_api`]; email goes to the step's SMTP server); the step fails when
//!   the service refused the message. The deploy plugins `slipway/deploy` and
//!   `peloton/drone-rancher` ask [`RunOptions::deployer`] (the runner's server, see
//!   [`deployer`]) to deploy and log the rollout as it goes; without one they fail. Known
//!   plugins that are not native yet fail at once when
//!   their image is not on the engine, rather than attempting a pull.
//! - [`mask`] and [`log`]: [`Masker`] and [`LineSplitter`], output bytes to masked lines.
//! - `beneath`: every host-side read of workspace content (the native plugins'), resolved
//!   beneath the workspace root through descriptors, never through a link leaving it.
//! - [`cleanup`]: ownership labels, [`remove_orphans`], the namespace reserved for untrusted
//!   builds' images ([`cleanup::UNTRUSTED_IMAGES`]).
//! - [`cache`]: dependency caches (`cache: {}` volumes): the names and labels of the Docker
//!   volumes that keep them between builds of one [`RunOptions::cache_scope`].
//!
//! Invariants:
//! - **Cleanup.** Every container, network and volume a build creates carries the labels
//!   `io.slipway.managed=true`, `io.slipway.owner=<host>:<pid>:<start time>` and
//!   `io.slipway.build=<id>`, and is removed before [`run`] returns, whatever happened:
//!   success, failure, time-out, cancellation or an error half-way. This is done explicitly
//!   on every path (each pipeline tears down what its backend recorded, then the build
//!   removes whatever still carries its build label), not in `Drop`. Workspaces and build
//!   directories are removed too: emptied, then kept as spares in
//!   `<work root>/.slipway-spare` for later ones (renaming an empty directory into place is
//!   cheaper than making one), except a workspace that a container which could not be
//!   removed still mounts: that one is removed for good. If the `run` future itself is
//!   dropped, a best-effort sweep is spawned, and what a killed process leaves behind is
//!   removed by [`remove_orphans`] (also called at the start of every [`run`]), which only
//!   touches resources of dead processes of this host.
//!   The one exception is deliberate: the Docker volumes of dependency caches carry
//!   `io.slipway.managed=true` and `io.slipway.cache=<scope>` but no owner or build label,
//!   so no cleanup or sweep removes them; they outlive the build (see [`cache`]).
//! - **Caches.** A cache volume is shared only by builds of the same
//!   [`RunOptions::cache_scope`], and no name or key a pipeline file chooses can reach
//!   another scope's volume. It is never a host path, so untrusted builds may use it.
//!   Without a scope it is a temp volume.
//! - **Masking.** Every line of output (steps, services, git) and every error text in the
//!   report goes through the build's [`Masker`], built from all secret values of the build,
//!   after being split into lines, so a secret split across reads is still masked. Each
//!   line is masked against its raw text and against the text the UI displays of it
//!   ([`mask::displayed`]: escape sequences and invisible characters removed), so escapes
//!   planted between a secret's characters do not reveal it.
//! - **Secrets** reach only the steps that name them, as the variables they name.
//! - **Trust.** Host volumes and privileged containers are refused unless
//!   [`RunOptions::trusted`]. An untrusted build's native `plugins/docker` image is tagged
//!   only `slipway-untrusted/<build id>:<pipeline>-<step>`, never pushed, labelled like the
//!   build's containers and removed with them (so on every exit path, and by
//!   [`remove_orphans`] after a crash): it can never take a name a trusted build resolves.
//!   No build may name that namespace (step, service, `repo`, `cache_from`). Nor does an
//!   untrusted build re-pull an image the engine has (`pull: always`, `pull_image`,
//!   `cache_from`): a pull replaces it for every build with what the registry serves.
//! - **The workspace stays the workspace.** What the engine reads of the workspace on the
//!   host (`.tags`, `.dockerignore`, the Dockerfile, the build context) is opened beneath
//!   its root: a symbolic link whose target leaves the workspace is refused with an error
//!   naming it, links inside the build context are archived as links and never followed.
//! - **Pre-started steps.** Starting a container costs hundreds of milliseconds (more on a
//!   user-defined network), so a Docker step with `commands` (not detached, not skipped by
//!   the plan, wanted by its `run_on` as the pipeline stands, and not mounting a `temp`
//!   volume or a cache volume its pipeline created, which Docker might fill from the image
//!   while it is still empty; a cache that existed before is fine) is started
//!   ahead of time once all its `depends_on` have started, at most two per pipeline at a
//!   time: image check or pull, container created with its stdin open, attached, started,
//!   its script blocked in `read` on stdin before anything else. When the step is due it is
//!   *released*: the build status so far (`success`/`failure`) is written to its stdin,
//!   which the script exports as `DRONE_BUILD_STATUS`/`CI_BUILD_STATUS` (the variables the
//!   engine sets for every step and service as it starts), and stdin is closed (the
//!   commands see an empty one). Until then the step does not exist for the outside
//!   world: no event is emitted for it (its output, if any, is held back, and so are the
//!   lines of a pull), and its `StepStarted`, start time and time limit all begin at the
//!   release. A pre-started step that does not run after all (its `run_on` says no once its
//!   dependencies are done, or the pipeline was aborted or cancelled) is *discarded*: its
//!   container is killed and removed, and it is reported only as skipped, like any skipped
//!   step. A pre-start that fails in any way is forgotten and the step is started the
//!   normal way when due. Pre-started containers are recorded and labelled like any other,
//!   so the cleanup invariant covers them.
//! - **Native steps** create no container, network or volume (a pipeline of native steps
//!   only gets no network either); the image a trusted build's `plugins/docker` step builds
//!   stays in the engine's image store as layer cache (an untrusted build's is removed, see
//!   Trust). Their log lines are masked like all others, and
//!   also mask the step's own `password` setting when it is written in clear.
//! - **Removal off the critical path.** A finished step's container is removed in the
//!   background, so the next step does not wait for it; a pipeline's teardown waits for all
//!   of these removals before removing the rest.

/// The kinds of notification channel, for [`RunOptions::notify_api`].
pub use slipway_notify::Kind as NotifyKind;
/// Parses one `--notify-api KIND=URL` value.
pub use slipway_notify::parse_api_override as parse_notify_api;

mod abort;
mod backend;
mod beneath;
pub mod cache;
pub mod cleanup;
mod dag;
pub mod deployer;
mod error;
mod event;
pub mod log;
pub mod mask;
mod native;
mod options;
mod scheduler;
mod script;
mod workspace;

use std::path::PathBuf;
use std::sync::Arc;

use bollard::Docker;
use slipway_spec::plan::{PipelineType, Plan};

pub use cleanup::remove_orphans;
pub use error::EngineError;
pub use event::{BuildReport, Event, EventSink, PipelineReport, Status, StepReport};
pub use log::LineSplitter;
pub use mask::Masker;
pub use options::{RegistryCredential, RunOptions, WorkspaceSource};

use abort::Abort;

/// The build's sink, also keeping what its steps pushed for later deploy steps.
struct Recording {
    inner: Arc<dyn EventSink>,
    pushed: Arc<std::sync::Mutex<Vec<deployer::PushedImage>>>,
}

impl EventSink for Recording {
    fn event(&self, event: Event) {
        if let Event::Artifact { image, digest, .. } = &event {
            self.pushed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(deployer::PushedImage {
                    image: image.clone(),
                    digest: digest.clone(),
                });
        }
        self.inner.event(event);
    }
}

/// Runs every pipeline of `plan`, sending events to `sink`; returns when everything has
/// finished and been cleaned up.
///
/// Fails before running anything when the plan's graphs are invalid, when it has Docker
/// pipelines and the Docker engine is unreachable, or when `work_root` is unusable.
pub async fn run(
    plan: &Plan,
    options: RunOptions,
    sink: Arc<dyn EventSink>,
) -> Result<BuildReport, EngineError> {
    dag::validate(plan)?;
    let needs_docker = plan
        .pipelines
        .iter()
        .any(|p| !p.skipped && p.kind == PipelineType::Docker);
    let docker = if needs_docker {
        let docker = backend::docker::connect().await?;
        match cleanup::remove_orphans_with(&docker).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} Docker resources left by dead engines"),
            Err(e) => tracing::warn!("could not remove orphaned resources: {e}"),
        }
        Some(docker)
    } else {
        None
    };

    let build_id = cleanup::new_build_id();
    let build_dir = options.work_root.join(format!("slipway-{build_id}"));
    workspace::create_build_dir(&options.work_root, &build_dir).await?;
    let mut guard = BuildGuard {
        docker: docker.clone(),
        build_id: build_id.clone(),
        work_root: options.work_root.clone(),
        build_dir: build_dir.clone(),
        done: false,
    };

    let abort = Abort::root(&options.cancel);
    let pushed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink: Arc<dyn EventSink> = Arc::new(Recording {
        inner: sink,
        pushed: pushed.clone(),
    });
    let build = scheduler::Build {
        plan,
        options: &options,
        sink,
        masker: Arc::new(Masker::new(
            options
                .secrets
                .values()
                .chain(options.own_registry.iter().map(|own| &own.password)),
        )),
        docker,
        build_id: &build_id,
        build_dir: &build_dir,
        images: backend::docker::KnownImages::default(),
        pushed,
    };
    let pipelines = abort
        .with_timeout("build", options.build_timeout, build.run(&abort))
        .await;
    guard.finish().await;

    let status = build_status(&pipelines, abort.is_aborted());
    Ok(BuildReport {
        status,
        pipelines,
        build_id,
    })
}

/// Killed beats Error beats Failure beats Success; a build whose pipelines were all skipped
/// is Skipped (or Killed, if that was because it was aborted).
fn build_status(pipelines: &[PipelineReport], aborted: bool) -> Status {
    let has = |status| pipelines.iter().any(|p| p.status == status);
    if has(Status::Killed) || (aborted && has(Status::Skipped)) {
        Status::Killed
    } else if has(Status::Error) {
        Status::Error
    } else if has(Status::Failure) {
        Status::Failure
    } else if !pipelines.is_empty() && pipelines.iter().all(|p| p.status == Status::Skipped) {
        Status::Skipped
    } else {
        Status::Success
    }
}

/// The build's last line of cleanup: everything labelled with its id, and its directory.
struct BuildGuard {
    docker: Option<Docker>,
    build_id: String,
    work_root: PathBuf,
    build_dir: PathBuf,
    done: bool,
}

impl BuildGuard {
    async fn finish(&mut self) {
        if let Some(docker) = &self.docker {
            match cleanup::sweep_build(docker, &self.build_id).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!("final sweep removed {n} resources"),
                Err(e) => tracing::warn!("final sweep of build {}: {e}", self.build_id),
            }
        }
        workspace::remove(&self.work_root, &self.build_dir).await;
        self.done = true;
    }
}

impl Drop for BuildGuard {
    /// Only reached when the `run` future is dropped mid-way (the normal paths call
    /// `finish`). Async cleanup cannot happen here, so it is handed to the runtime if there
    /// is one; `remove_orphans` is the backstop if not.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let (Some(docker), Ok(runtime)) =
            (self.docker.take(), tokio::runtime::Handle::try_current())
        {
            let build_id = std::mem::take(&mut self.build_id);
            runtime.spawn(async move {
                let _ = cleanup::sweep_build(&docker, &build_id).await;
            });
        }
        let _ = std::fs::remove_dir_all(&self.build_dir);
    }
}
