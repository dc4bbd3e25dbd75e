//! The Docker backend: one bridge network per pipeline, temp volumes, one container per step
//! and service, all labelled (see [`crate::cleanup`]) and removed at the end; and the
//! dependency caches of the build's scope (see [`crate::cache`]), created when missing and
//! never removed. Untrusted builds never re-pull an image the engine has (see
//! [`crate::RunOptions::trusted`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use slipway_spec::plan::{PipelinePlan, PullPolicy, StepPlan, VolumePlan, VolumeSource};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Backend, Role, StepSpec, sanitize};
use crate::cache;
use crate::cleanup::{self, LABEL_STEP, is_not_found};
use crate::error::EngineError;
use crate::log::{LogStream, StepLog};
use crate::script;

type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Connects to the local engine (`DOCKER_HOST` or `/var/run/docker.sock`) and agrees on an
/// API version, so the engine works with older daemons (Debian's 20.10 speaks 1.41).
pub(crate) async fn connect() -> Result<Docker, EngineError> {
    let docker = Docker::connect_with_local_defaults()
        .map_err(|error| EngineError::DockerUnavailable { error })?;
    docker
        .negotiate_version()
        .await
        .map_err(|error| EngineError::DockerUnavailable { error })
}

/// Images a build found (or pulled) on the engine, so that steps sharing an image do not
/// each inspect it again before they start. `pull: always` still pulls every time.
#[derive(Debug, Default)]
pub(crate) struct KnownImages(Mutex<HashSet<String>>);

impl KnownImages {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn contains(&self, image: &str) -> bool {
        self.lock().contains(image)
    }

    fn insert(&self, image: &str) {
        self.lock().insert(image.to_string());
    }

    fn forget(&self, image: &str) {
        self.lock().remove(image);
    }
}

/// Names of what this backend created (or was about to create), for teardown.
#[derive(Debug, Default)]
struct Created {
    containers: Vec<String>,
    volumes: Vec<String>,
    network: Option<String>,
}

#[derive(Debug)]
pub(crate) struct DockerBackend<'a> {
    docker: Docker,
    build_id: &'a str,
    pipeline_index: usize,
    pipeline: &'a PipelinePlan,
    workspace: PathBuf,
    trusted: bool,
    /// Native plugins are on: plugin steps run natively, known plugins that are not native
    /// fail at once when their image is missing.
    native_plugins: bool,
    images: &'a KnownImages,
    /// [`crate::RunOptions::cache_scope`]: `None` makes cache volumes temp volumes.
    cache_scope: Option<&'a str>,
    /// Names of the pipeline's cache volumes whose Docker volume existed before `setup`
    /// (filled by an earlier build), so steps mounting them may be pre-started.
    existing_caches: Mutex<HashSet<String>>,
    created: Mutex<Created>,
    /// Container removals running in the background; each yields the name it removed.
    removals: Mutex<Vec<JoinHandle<Option<String>>>>,
}

#[derive(Debug)]
pub(crate) struct DockerProcess {
    /// The container name (unique per build); used instead of the id so it is known before
    /// the container exists.
    name: String,
    /// Forwards the output; yields how many bytes the container printed.
    logs: Option<JoinHandle<u64>>,
    /// Waits for the container to stop; started with the container, so its exit code is
    /// known as soon as the output ends.
    exit: Option<JoinHandle<Result<i64, EngineError>>>,
    /// Started through a gate ([`Backend::prepare`]).
    gated: bool,
    /// The output ended without a single byte.
    silent: bool,
}

/// A step container started ahead of time, blocked in `read` on its stdin.
pub(crate) struct PreparedContainer {
    name: String,
    /// The container's stdin: the release line is written here, then it is closed.
    input: Pin<Box<dyn AsyncWrite + Send>>,
    /// Hands the step's log to the output forwarder, which holds everything back until then.
    release: oneshot::Sender<StepLog>,
    logs: JoinHandle<u64>,
    exit: JoinHandle<Result<i64, EngineError>>,
    /// Lines for the step's log (an image pull) produced before it was released.
    notes: Vec<String>,
}

impl std::fmt::Debug for PreparedContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedContainer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<'a> DockerBackend<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        docker: Docker,
        build_id: &'a str,
        pipeline_index: usize,
        pipeline: &'a PipelinePlan,
        workspace: &Path,
        trusted: bool,
        native_plugins: bool,
        images: &'a KnownImages,
        cache_scope: Option<&'a str>,
    ) -> Self {
        DockerBackend {
            docker,
            build_id,
            pipeline_index,
            pipeline,
            workspace: workspace.to_path_buf(),
            trusted,
            native_plugins,
            images,
            cache_scope,
            existing_caches: Mutex::default(),
            created: Mutex::default(),
            removals: Mutex::default(),
        }
    }

    fn created(&self) -> std::sync::MutexGuard<'_, Created> {
        // A panic while holding this lock cannot leave the lists inconsistent (each update
        // is a single push or retain), so a poisoned lock is still good to use.
        self.created.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn removals(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<Option<String>>>> {
        self.removals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Kills and removes a container in the background; teardown waits for it.
    fn remove_later(&self, name: String) {
        let docker = self.docker.clone();
        let removal = tokio::spawn(async move {
            match remove_container(&docker, &name).await {
                Ok(()) => Some(name),
                // Left in the list: teardown tries again.
                Err(e) => {
                    tracing::warn!("removing container {name}: {e}");
                    None
                }
            }
        });
        self.removals().push(removal);
    }

    fn prefix(&self) -> String {
        format!("slipway-{}-{}", self.build_id, self.pipeline_index)
    }

    fn network_name(&self) -> String {
        self.prefix()
    }

    fn volume_name(&self, index: usize, name: &str) -> String {
        format!("{}-v{index}-{}", self.prefix(), sanitize(name))
    }

    /// The Docker volume behind pipeline volume number `index`, for the kinds backed by one:
    /// a per-build name for temp volumes (and for caches when the build has no cache
    /// scope), the persistent name of the scope for caches.
    fn docker_volume(&self, index: usize, volume: &VolumePlan) -> Option<String> {
        match (&volume.source, self.cache_scope) {
            (VolumeSource::Temp, _) | (VolumeSource::Cache { .. }, None) => {
                Some(self.volume_name(index, &volume.name))
            }
            (VolumeSource::Cache { key }, Some(scope)) => {
                Some(cache::volume_name(scope, &volume.name, key.as_deref()))
            }
            (VolumeSource::Host { .. }, _) => None,
        }
    }

    fn existing_caches(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.existing_caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes sure the Docker volume of a cache exists (creating it, labelled as a cache of
    /// this scope and of no build, when missing) and remembers whether it was there
    /// already. A volume of that name that is not this scope's cache is refused rather
    /// than mounted.
    async fn ensure_cache(
        &self,
        volume: &VolumePlan,
        scope: &str,
        key: Option<&str>,
        docker_volume: &str,
    ) -> Result<(), EngineError> {
        let error = |reason: String| EngineError::Cache {
            volume: volume.name.clone(),
            docker_volume: docker_volume.to_string(),
            reason,
        };
        match self.docker.inspect_volume(docker_volume).await {
            Ok(existing) => {
                let owner = existing.labels.get(cache::LABEL_CACHE).map(String::as_str);
                if owner != Some(scope) {
                    return Err(error(format!(
                        "a Docker volume of this name exists but is not the cache of scope \
                         `{scope}` (its {} label is {}); remove it with `docker volume rm \
                         {docker_volume}`",
                        cache::LABEL_CACHE,
                        owner.map_or_else(|| "missing".to_string(), |o| format!("`{o}`"))
                    )));
                }
                self.existing_caches().insert(volume.name.clone());
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                // Creating an existing volume returns it, so a concurrent build creating the
                // same cache is fine.
                self.docker
                    .create_volume(VolumeCreateRequest {
                        name: Some(docker_volume.to_string()),
                        labels: Some(cache::labels(scope, &volume.name, key)),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| error(format!("creating it: {e}")))?;
                Ok(())
            }
            Err(e) => Err(error(format!("inspecting it: {e}"))),
        }
    }

    /// The name of a pre-started container: not the one `start` uses, so that falling back
    /// to `start` never collides with a pre-started container still being removed.
    fn prepared_name(&self, step: &StepSpec<'_>) -> String {
        format!("{}-w", self.container_name(step))
    }

    fn container_name(&self, step: &StepSpec<'_>) -> String {
        let kind = match step.role {
            Role::Step => "s",
            Role::Service => "svc",
        };
        format!(
            "{}-{kind}{}-{}",
            self.prefix(),
            step.index,
            sanitize(&step.plan.name)
        )
    }

    /// Mounts of a step: the workspace, then its volumes. Refuses host paths unless trusted.
    fn mounts(&self, step: &StepSpec<'_>) -> Result<(Vec<Mount>, Vec<String>), EngineError> {
        let name = &step.plan.name;
        let mut mounts = vec![Mount {
            target: Some(self.pipeline.workspace.clone()),
            source: Some(self.workspace.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            ..Default::default()
        }];
        let mut binds = Vec::new();
        for wanted in &step.plan.volumes {
            let Some((index, volume)) = self
                .pipeline
                .volumes
                .iter()
                .enumerate()
                .find(|(_, v)| v.name == wanted.name)
            else {
                return Err(EngineError::refused(
                    name,
                    format!(
                        "mounts volume `{}`, which the pipeline does not declare under `volumes:`",
                        wanted.name
                    ),
                ));
            };
            match &volume.source {
                VolumeSource::Temp | VolumeSource::Cache { .. } => mounts.push(Mount {
                    target: Some(wanted.path.clone()),
                    source: self.docker_volume(index, volume),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }),
                VolumeSource::Host { path } => {
                    if !self.trusted {
                        return Err(EngineError::refused(
                            name,
                            format!(
                                "mounts host path `{path}` (volume `{}`), but host volumes are only \
                                 allowed for trusted builds; mark the repository trusted or use a \
                                 `temp` volume",
                                volume.name
                            ),
                        ));
                    }
                    // A bind string rather than a Mount: like `docker run -v`, it creates a
                    // missing host directory instead of failing.
                    binds.push(format!("{path}:{}", wanted.path));
                }
            }
        }
        Ok((mounts, binds))
    }

    /// Makes sure `image` is on the engine, pulling it if the policy says so; the lines it
    /// has to say ("pulling image ...") go to `note`.
    async fn ensure_image(
        &self,
        image: &str,
        pull: PullPolicy,
        note: &(dyn Fn(&str) + Sync),
        abort: &CancellationToken,
    ) -> Result<(), EngineError> {
        let plan_pull_always = pull == PullPolicy::Always;
        // A known plugin that is not native yet is not pulled: on an offline runner the
        // pull would hang, and the message says what to do instead.
        let plugin = self
            .native_plugins
            .then(|| crate::native::unavailable_plugin(image))
            .flatten();
        if let Some(plugin) = plugin
            && !self.images.contains(image)
        {
            match self.docker.inspect_image(image).await {
                Ok(_) => self.images.insert(image),
                Err(e) if is_not_found(&e) => {
                    return Err(EngineError::PluginUnavailable {
                        plugin: plugin.to_string(),
                        image: image.to_string(),
                    });
                }
                Err(e) => {
                    return Err(EngineError::docker(
                        format!("inspecting image `{image}`"),
                        e,
                    ));
                }
            }
        }
        // An untrusted build never re-pulls an image the engine has: the pull would replace
        // it, for every build, with whatever the registry serves under that name (a name
        // that only ever existed here may be anyone's on Docker Hub).
        let pull = match pull {
            PullPolicy::Always if !self.trusted => PullPolicy::IfNotExists,
            other => other,
        };
        let present = match pull {
            PullPolicy::Always => false,
            PullPolicy::IfNotExists | PullPolicy::Never if self.images.contains(image) => true,
            PullPolicy::IfNotExists | PullPolicy::Never => {
                match self.docker.inspect_image(image).await {
                    Ok(_) => true,
                    Err(e) if is_not_found(&e) => false,
                    Err(e) => {
                        return Err(EngineError::docker(
                            format!("inspecting image `{image}`"),
                            e,
                        ));
                    }
                }
            }
        };
        if present {
            if !self.trusted && plan_pull_always {
                note(&format!(
                    "untrusted build: not re-pulling {image}, which is on this engine already \
                     (`pull: always` would replace it for trusted builds too); using it as it is"
                ));
            }
            self.images.insert(image);
            return Ok(());
        }
        if pull == PullPolicy::Never {
            return Err(EngineError::Image {
                image: image.to_string(),
                reason: "it is not on this Docker engine and the step's pull policy is `never`"
                    .to_string(),
                hint: "build or load it on this host first (`docker build -t <image> .`, \
                       `docker load`), or allow pulling",
            });
        }
        self.pull(image, note, abort).await?;
        self.images.insert(image);
        Ok(())
    }

    async fn pull(
        &self,
        image: &str,
        note: &(dyn Fn(&str) + Sync),
        abort: &CancellationToken,
    ) -> Result<(), EngineError> {
        note(&format!("pulling image {image}"));
        let (repository, tag) = split_reference(image);
        let options = CreateImageOptionsBuilder::new()
            .from_image(repository)
            .tag(tag)
            .build();
        // Progress messages are consumed silently: one line per layer and percent would
        // drown the step's own output.
        let mut progress = self.docker.create_image(Some(options), None, None);
        loop {
            let item = tokio::select! {
                item = progress.next() => item,
                () = abort.cancelled() => {
                    return Err(EngineError::Image {
                        image: image.to_string(),
                        reason: "the pull was interrupted".to_string(),
                        hint: "the build was cancelled or timed out",
                    });
                }
            };
            match item {
                None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(EngineError::Image {
                        image: image.to_string(),
                        reason: format!("pulling it failed: {e}"),
                        hint: "check the image name, that its registry is reachable from this \
                               host and its credentials, or build the image on this host",
                    });
                }
            }
        }
        note(&format!("pulled image {image}"));
        Ok(())
    }

    /// What `start` and `prepare` share: the checks, the image, the container's
    /// configuration. `gated`: the commands wait for a line on stdin ([`script::gated`]).
    async fn container_config(
        &self,
        step: &StepSpec<'_>,
        gated: bool,
        note: &(dyn Fn(&str) + Sync),
        abort: &CancellationToken,
    ) -> Result<ContainerCreateBody, EngineError> {
        let plan = step.plan;
        if crate::native::reserved_image(&plan.image) {
            return Err(EngineError::refused(
                &plan.name,
                format!(
                    "uses image `{}`: the `{}` namespace is reserved for the images of \
                     untrusted builds, which are removed when their stage ends; use an image \
                     of another name",
                    plan.image,
                    cleanup::UNTRUSTED_IMAGES.trim_end_matches('/')
                ),
            ));
        }
        if plan.privileged && !self.trusted {
            return Err(EngineError::refused(
                &plan.name,
                "asks for privileged mode, which is only allowed for trusted builds; mark the \
                 repository trusted or drop `privileged: true`",
            ));
        }
        let (mounts, binds) = self.mounts(step)?;
        if self.cache_scope.is_none() {
            for volume in self.pipeline.volumes.iter().filter(|v| {
                matches!(v.source, VolumeSource::Cache { .. })
                    && plan.volumes.iter().any(|w| w.name == v.name)
            }) {
                note(&format!(
                    "warning: this run has no cache scope, so cache volume `{}` is a temp \
                     volume: it starts empty and is removed after the build",
                    volume.name
                ));
            }
        }
        self.ensure_image(&plan.image, plan.pull, note, abort)
            .await?;

        let (entrypoint, cmd) = match &step.script {
            Some(script) => {
                let script = if gated {
                    script::gated(&plan.commands)
                } else {
                    script.clone()
                };
                (
                    Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
                    Some(vec![script]),
                )
            }
            None => (plan.entrypoint.clone(), plan.command.clone()),
        };
        let network = self.network_name();
        let mut labels = cleanup::labels(self.build_id, &self.pipeline.name);
        labels.insert(LABEL_STEP.to_string(), plan.name.clone());
        Ok(ContainerCreateBody {
            image: Some(plan.image.clone()),
            env: Some(step.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            entrypoint,
            cmd,
            working_dir: Some(self.pipeline.workspace.clone()),
            user: plan.user.clone(),
            labels: Some(labels),
            // The gate is a line on stdin; once it is through, stdin is closed, so the
            // commands see an empty stdin as in a container without one.
            open_stdin: gated.then_some(true),
            stdin_once: gated.then_some(true),
            attach_stdin: gated.then_some(true),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                binds: (!binds.is_empty()).then_some(binds),
                network_mode: Some(network.clone()),
                privileged: Some(plan.privileged),
                ..Default::default()
            }),
            // The alias makes services (and detached steps acting as services) reachable
            // by their name from the other containers of the pipeline.
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network,
                    EndpointSettings {
                        aliases: Some(vec![plan.name.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        })
    }

    async fn create(
        &self,
        name: &str,
        step: &StepSpec<'_>,
        config: ContainerCreateBody,
    ) -> Result<(), EngineError> {
        self.created().containers.push(name.to_string());
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                config,
            )
            .await;
        created.map(drop).map_err(|e| {
            if is_not_found(&e) {
                // The image went away since it was checked.
                self.images.forget(&step.plan.image);
            }
            EngineError::docker(format!("creating container for `{}`", step.plan.name), e)
        })
    }

    /// Creates, attaches to and starts a step held at its gate. On an error, what was
    /// created is being removed.
    async fn prepare_container(
        &self,
        name: &str,
        step: &StepSpec<'_>,
        notes: &Mutex<Vec<String>>,
        abort: &CancellationToken,
    ) -> Result<PreparedContainer, EngineError> {
        let note = |line: &str| {
            notes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line.to_string())
        };
        let config = self.container_config(step, true, &note, abort).await?;
        self.create(name, step, config).await?;
        let attach = self
            .docker
            .attach_container(name, Some(attach_options(true)))
            .await
            .map_err(|e| EngineError::docker(format!("attaching to `{}`", step.plan.name), e))?;
        let (release, released) = oneshot::channel();
        let logs = tokio::spawn(forward_output(
            attach.output,
            name.to_string(),
            Target::AtRelease(released),
        ));
        if let Err(e) = self.docker.start_container(name, None).await {
            logs.abort();
            return Err(EngineError::docker(
                format!("starting container for `{}`", step.plan.name),
                e,
            ));
        }
        let exit = tokio::spawn(exit_code(self.docker.clone(), name.to_string()));
        Ok(PreparedContainer {
            name: name.to_string(),
            input: attach.input,
            release,
            logs,
            exit,
            notes: Vec::new(),
        })
    }
}

/// `repo[:tag]` or `repo@digest` as the pull API wants them: repository and tag (or
/// digest), `latest` when neither is given (an empty tag would pull every tag).
pub(crate) fn split_reference(image: &str) -> (&str, &str) {
    if let Some((repository, digest)) = image.split_once('@') {
        return (repository, digest);
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => (&image[..name_start + i], &image[name_start + i + 1..]),
        None => (image, "latest"),
    }
}

impl Backend for DockerBackend<'_> {
    type Process = DockerProcess;
    type Prepared = PreparedContainer;

    fn native_host(&self) -> Option<crate::native::NativeHost<'_>> {
        self.native_plugins.then_some(crate::native::NativeHost {
            docker: &self.docker,
            trusted: self.trusted,
            build_id: self.build_id,
            pipeline_index: self.pipeline_index,
            pipeline: &self.pipeline.name,
            workspace: &self.workspace,
            container_workspace: &self.pipeline.workspace,
        })
    }

    fn can_prepare(&self, step: &StepPlan) -> bool {
        // Docker fills an empty named volume with what the image has at the mount point when
        // a container using it is created. Created early, a step could find a volume still
        // empty that its dependencies were about to write to, and get (or give the others)
        // files it would not have had; so steps mounting `temp` volumes start when due.
        // A cache volume that existed before this build was filled (image content included)
        // at its first use, so Docker copies nothing into it any more and an early start
        // sees exactly what a late one would (should it still be empty, the worst an early
        // start does is copy the image's files at the mount point into it a little sooner,
        // which a cache, disposable by definition, can take). A cache created by this build
        // is empty, like a temp volume, and so is one without a scope (a temp volume).
        let existing = self.existing_caches();
        let mounts_empty_volume = step.volumes.iter().any(|wanted| {
            self.pipeline.volumes.iter().any(|v| {
                v.name == wanted.name
                    && match v.source {
                        VolumeSource::Temp => true,
                        VolumeSource::Cache { .. } => !existing.contains(&v.name),
                        VolumeSource::Host { .. } => false,
                    }
            })
        });
        !step.commands.is_empty() && !mounts_empty_volume
    }

    async fn prepare(
        &self,
        step: &StepSpec<'_>,
        abort: &CancellationToken,
    ) -> Result<PreparedContainer, EngineError> {
        if step.script.is_none() {
            return Err(EngineError::refused(
                &step.plan.name,
                "only steps with `commands` can be pre-started",
            ));
        }
        let name = self.prepared_name(step);
        let notes = Mutex::new(Vec::new());
        match self.prepare_container(&name, step, &notes, abort).await {
            Ok(mut prepared) => {
                prepared.notes = notes.into_inner().unwrap_or_else(PoisonError::into_inner);
                Ok(prepared)
            }
            Err(e) => {
                self.remove_later(name);
                Err(e)
            }
        }
    }

    async fn release(
        &self,
        prepared: PreparedContainer,
        failed: bool,
        log: StepLog,
    ) -> Result<DockerProcess, EngineError> {
        let PreparedContainer {
            name,
            mut input,
            release,
            logs,
            exit,
            notes,
        } = prepared;
        // Until the release line is written nothing has run, so every failure up to there
        // can fall back to a fresh start.
        let fail = |reason: String| {
            logs.abort();
            exit.abort();
            self.remove_later(name.clone());
            Err(EngineError::io(
                format!("releasing container {name}"),
                std::io::Error::other(reason),
            ))
        };
        if exit.is_finished() {
            return fail("it stopped before it was released".to_string());
        }
        for note in &notes {
            log.line(note);
        }
        if release.send(log).is_err() {
            return fail("its output forwarder ended".to_string());
        }
        if let Err(e) = input.write_all(script::release_line(failed)).await {
            return fail(format!("writing to its stdin: {e}"));
        }
        // The commands run now. Closing stdin gives them an empty one, as in a container
        // without stdin; should that fail, reading stdin would block, which only the step's
        // time limit ends, but the step itself still runs.
        let close = async {
            input.flush().await?;
            input.shutdown().await
        };
        if let Err(e) = close.await {
            tracing::warn!("closing the stdin of container {name}: {e}");
        }
        Ok(DockerProcess {
            name,
            logs: Some(logs),
            exit: Some(exit),
            gated: true,
            silent: false,
        })
    }

    async fn discard(&self, prepared: PreparedContainer) {
        // Dropping `release` makes the forwarder drop whatever it held back, unseen.
        let PreparedContainer {
            name, logs, exit, ..
        } = prepared;
        logs.abort();
        exit.abort();
        self.remove_later(name);
    }

    async fn setup(&self) -> Result<(), EngineError> {
        // A pipeline of native plugin steps only starts no container: it needs no network
        // and no volumes (their creation and removal would be most of its overhead).
        let all_native = self.native_plugins
            && self.pipeline.services.is_empty()
            && self
                .pipeline
                .steps
                .iter()
                .all(|step| crate::native::native_plugin(step).is_some());
        if all_native {
            return Ok(());
        }
        let labels = cleanup::labels(self.build_id, &self.pipeline.name);
        let network = self.network_name();
        self.created().network = Some(network.clone());
        self.docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("bridge".to_string()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| EngineError::docker(format!("creating network {network}"), e))?;
        for (index, volume) in self.pipeline.volumes.iter().enumerate() {
            let Some(name) = self.docker_volume(index, volume) else {
                continue;
            };
            if let (VolumeSource::Cache { key }, Some(scope)) = (&volume.source, self.cache_scope) {
                // Not recorded in `created`, and labelled with no build: it outlives the build.
                self.ensure_cache(volume, scope, key.as_deref(), &name)
                    .await?;
                continue;
            }
            self.created().volumes.push(name.clone());
            self.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(name.clone()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                })
                .await
                .map_err(|e| EngineError::docker(format!("creating volume {name}"), e))?;
        }
        Ok(())
    }

    async fn start(
        &self,
        step: &StepSpec<'_>,
        log: StepLog,
        abort: &CancellationToken,
    ) -> Result<DockerProcess, EngineError> {
        let note = |line: &str| log.line(line);
        let config = self.container_config(step, false, &note, abort).await?;
        let name = self.container_name(step);
        self.create(&name, step, config).await?;
        // Attach before start, like `docker run`: the attach stream carries the process's
        // output straight from its stdio, so nothing printed early is missed and a last line
        // without a newline is delivered too (following the json-file log instead loses
        // that tail now and then: the follow ends on the container's exit, sometimes before
        // the final partial line was written).
        let attach = self
            .docker
            .attach_container(&name, Some(attach_options(false)))
            .await
            .map_err(|e| EngineError::docker(format!("attaching to `{}`", step.plan.name), e))?;
        let logs = tokio::spawn(forward_output(
            attach.output,
            name.clone(),
            Target::Now(log),
        ));
        if let Err(e) = self.docker.start_container(&name, None).await {
            logs.abort();
            return Err(EngineError::docker(
                format!("starting container for `{}`", step.plan.name),
                e,
            ));
        }
        let exit = tokio::spawn(exit_code(self.docker.clone(), name.clone()));
        Ok(DockerProcess {
            name,
            logs: Some(logs),
            exit: Some(exit),
            gated: false,
            silent: false,
        })
    }

    async fn wait(&self, process: &mut DockerProcess) -> Result<i64, EngineError> {
        // The output stream ends when the container's stdio closes; waiting for it first
        // means every line is emitted before the step is reported finished. A handle is
        // cleared as soon as it has yielded (a finished JoinHandle must not be polled again),
        // so this can be dropped at any await and called again.
        if let Some(logs) = process.logs.as_mut() {
            let bytes = logs.await;
            process.logs = None;
            process.silent = matches!(bytes, Ok(0));
        }
        let code = match process.exit.as_mut() {
            Some(exit) => {
                let code = exit.await;
                process.exit = None;
                match code {
                    Ok(code) => code,
                    Err(_) => exit_code(self.docker.clone(), process.name.clone()).await,
                }
            }
            None => exit_code(self.docker.clone(), process.name.clone()).await,
        }?;
        // A released step prints the trace of its first command before anything else, so a
        // clean exit without output means its commands never ran: the gate did not work.
        if process.gated && process.silent && code == 0 {
            return Err(EngineError::io(
                format!("running container {}", process.name),
                std::io::Error::other("it exited before it was released"),
            ));
        }
        Ok(code)
    }

    async fn kill(&self, process: &mut DockerProcess) -> bool {
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match self
            .docker
            .kill_container(&process.name, Some(options))
            .await
        {
            Ok(()) => true,
            // 409: not running, 404: gone.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => false,
            Err(e) => {
                tracing::warn!(
                    "killing container {}: {e}; removing it instead",
                    process.name
                );
                let force = RemoveContainerOptionsBuilder::new().force(true).build();
                let _ = self
                    .docker
                    .remove_container(&process.name, Some(force))
                    .await;
                true
            }
        }
    }

    async fn remove(&self, process: DockerProcess) {
        if let Some(logs) = &process.logs {
            logs.abort();
        }
        if let Some(exit) = &process.exit {
            exit.abort();
        }
        // Off the critical path: the next step need not wait for this one's removal.
        self.remove_later(process.name);
    }

    async fn teardown(&self) -> bool {
        let removals = std::mem::take(&mut *self.removals());
        for removal in removals {
            if let Ok(Some(name)) = removal.await {
                self.created().containers.retain(|c| *c != name);
            }
        }
        let Created {
            containers,
            volumes,
            network,
        } = std::mem::take(&mut *self.created());
        let results = futures_util::future::join_all(
            containers
                .iter()
                .map(|name| remove_container(&self.docker, name)),
        )
        .await;
        let mut all_removed = true;
        for (name, result) in containers.iter().zip(results) {
            if let Err(e) = result {
                tracing::warn!("removing container {name}: {e}");
                all_removed = false;
            }
        }
        for name in volumes {
            let options = RemoveVolumeOptionsBuilder::new().force(true).build();
            match self.docker.remove_volume(&name, Some(options)).await {
                Err(e) if !is_not_found(&e) => tracing::warn!("removing volume {name}: {e}"),
                _ => {}
            }
        }
        if let Some(name) = network {
            // Container removal is synchronous, but the daemon may take a moment to release
            // the endpoints; one retry covers that.
            for attempt in 0..2 {
                match self.docker.remove_network(&name).await {
                    Ok(()) => break,
                    Err(e) if is_not_found(&e) => break,
                    Err(e) if attempt == 0 => {
                        tracing::debug!("removing network {name}: {e}; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    }
                    Err(e) => tracing::warn!("removing network {name}: {e}"),
                }
            }
        }
        all_removed
    }
}

/// Force-removes a container (and its anonymous volumes); one already gone is fine.
async fn remove_container(docker: &Docker, name: &str) -> Result<(), bollard::errors::Error> {
    let force = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(name, Some(force)).await {
        Err(e) if !is_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Waits until a container is not running; returns its exit code.
async fn exit_code(docker: Docker, name: String) -> Result<i64, EngineError> {
    let options = WaitContainerOptionsBuilder::new()
        .condition("not-running")
        .build();
    let mut wait = docker.wait_container(&name, Some(options));
    match wait.next().await {
        Some(Ok(response)) => Ok(response.status_code),
        // bollard turns a non-zero exit into an error; for us it is just the exit code.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(EngineError::docker("waiting for a container", e)),
        None => {
            let inspect = docker
                .inspect_container(&name, None)
                .await
                .map_err(|e| EngineError::docker("inspecting a container", e))?;
            Ok(inspect.state.and_then(|s| s.exit_code).unwrap_or(-1))
        }
    }
}

/// Where a container's output goes.
enum Target {
    /// Straight into the step's log.
    Now(StepLog),
    /// A pre-started step: nothing may be seen before it is released, when its log arrives;
    /// what it printed before is held until then, and dropped if it never is.
    AtRelease(oneshot::Receiver<StepLog>),
}

/// Turns a container's output into its log until the container's stdio closes; returns how
/// many bytes it printed.
/// Attach options for a step container: its output as a stream from now on (like
/// `docker run`), and stdin too for a pre-started container's gate.
fn attach_options(stdin: bool) -> bollard::query_parameters::AttachContainerOptions {
    AttachContainerOptionsBuilder::new()
        .stream(true)
        .stdin(stdin)
        .stdout(true)
        .stderr(true)
        .logs(false)
        .build()
}

async fn forward_output(mut output: OutputStream, container: String, target: Target) -> u64 {
    let mut lines = match target {
        Target::Now(log) => Lines::new(&log),
        Target::AtRelease(mut released) => {
            let mut held = Vec::new();
            let mut ended = false;
            let log = loop {
                tokio::select! {
                    log = &mut released => match log {
                        Ok(log) => break log,
                        // Discarded: what it printed is never seen.
                        Err(_) => return 0,
                    },
                    item = output.next(), if !ended => match item {
                        Some(Ok(chunk)) => held.push(chunk),
                        Some(Err(e)) => {
                            tracing::debug!("output stream of {container} ended: {e}");
                            ended = true;
                        }
                        None => ended = true,
                    },
                }
            };
            let mut lines = Lines::new(&log);
            for chunk in held {
                lines.push(chunk);
            }
            if ended {
                return lines.finish();
            }
            lines
        }
    };
    while let Some(item) = output.next().await {
        match item {
            Ok(chunk) => lines.push(chunk),
            Err(e) => {
                tracing::debug!("output stream of {container} ended: {e}");
                break;
            }
        }
    }
    lines.finish()
}

/// A container's stdout and stderr on their way into its log.
struct Lines {
    // One splitter per stream: interleaved chunks of stdout and stderr must not be glued
    // into one line.
    stdout: LogStream,
    stderr: LogStream,
    bytes: u64,
}

impl Lines {
    fn new(log: &StepLog) -> Lines {
        Lines {
            stdout: log.stream(),
            stderr: log.stream(),
            bytes: 0,
        }
    }

    fn push(&mut self, chunk: LogOutput) {
        let (stream, message) = match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (&mut self.stdout, message)
            }
            LogOutput::StdErr { message } => (&mut self.stderr, message),
            LogOutput::StdIn { .. } => return,
        };
        self.bytes += message.len() as u64;
        stream.push(&message);
    }

    fn finish(mut self) -> u64 {
        self.stdout.finish();
        self.stderr.finish();
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn splits_image_references() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(
            split_reference("localhost:5000/team/app"),
            ("localhost:5000/team/app", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/team/app:v2"),
            ("localhost:5000/team/app", "v2")
        );
        assert_eq!(split_reference("app@sha256:abc"), ("app", "sha256:abc"));
    }
}
