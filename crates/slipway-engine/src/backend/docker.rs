//! The Docker backend: one bridge network per pipeline, temp volumes, one container per step
//! and service, all labelled (see [`crate::cleanup`]) and removed at the end.

use std::collections::HashMap;
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
use slipway_spec::plan::{PipelinePlan, PullPolicy, VolumeSource};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Backend, Role, StepSpec, sanitize};
use crate::cleanup::{self, LABEL_STEP, is_not_found};
use crate::error::EngineError;
use crate::log::StepLog;

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
    created: Mutex<Created>,
}

#[derive(Debug)]
pub(crate) struct DockerProcess {
    /// The container name (unique per build); used instead of the id so it is known before
    /// the container exists.
    name: String,
    logs: Option<JoinHandle<()>>,
}

impl<'a> DockerBackend<'a> {
    pub(crate) fn new(
        docker: Docker,
        build_id: &'a str,
        pipeline_index: usize,
        pipeline: &'a PipelinePlan,
        workspace: &Path,
        trusted: bool,
    ) -> Self {
        DockerBackend {
            docker,
            build_id,
            pipeline_index,
            pipeline,
            workspace: workspace.to_path_buf(),
            trusted,
            created: Mutex::default(),
        }
    }

    fn created(&self) -> std::sync::MutexGuard<'_, Created> {
        // A panic while holding this lock cannot leave the lists inconsistent (each update
        // is a single push or retain), so a poisoned lock is still good to use.
        self.created.lock().unwrap_or_else(PoisonError::into_inner)
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
                VolumeSource::Temp => mounts.push(Mount {
                    target: Some(wanted.path.clone()),
                    source: Some(self.volume_name(index, &volume.name)),
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

    async fn ensure_image(
        &self,
        image: &str,
        pull: PullPolicy,
        log: &StepLog,
        abort: &CancellationToken,
    ) -> Result<(), EngineError> {
        let present = match pull {
            PullPolicy::Always => false,
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
        self.pull(image, log, abort).await
    }

    async fn pull(
        &self,
        image: &str,
        log: &StepLog,
        abort: &CancellationToken,
    ) -> Result<(), EngineError> {
        log.line(&format!("pulling image {image}"));
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
        log.line(&format!("pulled image {image}"));
        Ok(())
    }
}

/// `repo[:tag]` or `repo@digest` as the pull API wants them: repository and tag (or
/// digest), `latest` when neither is given (an empty tag would pull every tag).
fn split_reference(image: &str) -> (&str, &str) {
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

    async fn setup(&self) -> Result<(), EngineError> {
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
            if volume.source != VolumeSource::Temp {
                continue;
            }
            let name = self.volume_name(index, &volume.name);
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
        let plan = step.plan;
        if plan.privileged && !self.trusted {
            return Err(EngineError::refused(
                &plan.name,
                "asks for privileged mode, which is only allowed for trusted builds; mark the \
                 repository trusted or drop `privileged: true`",
            ));
        }
        let (mounts, binds) = self.mounts(step)?;
        self.ensure_image(&plan.image, plan.pull, &log, abort)
            .await?;

        let (entrypoint, cmd) = match &step.script {
            Some(script) => (
                Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
                Some(vec![script.clone()]),
            ),
            None => (plan.entrypoint.clone(), plan.command.clone()),
        };
        let network = self.network_name();
        let mut labels = cleanup::labels(self.build_id, &self.pipeline.name);
        labels.insert(LABEL_STEP.to_string(), plan.name.clone());
        let config = ContainerCreateBody {
            image: Some(plan.image.clone()),
            env: Some(step.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            entrypoint,
            cmd,
            working_dir: Some(self.pipeline.workspace.clone()),
            user: plan.user.clone(),
            labels: Some(labels),
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
        };

        let name = self.container_name(step);
        self.created().containers.push(name.clone());
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                config,
            )
            .await
            .map_err(|e| {
                EngineError::docker(format!("creating container for `{}`", plan.name), e)
            })?;
        // Attach before start, like `docker run`: the attach stream carries the process's
        // output straight from its stdio, so nothing printed early is missed and a last line
        // without a newline is delivered too (following the json-file log instead loses
        // that tail now and then: the follow ends on the container's exit, sometimes before
        // the final partial line was written).
        let attach = self
            .docker
            .attach_container(
                &name,
                Some(
                    AttachContainerOptionsBuilder::new()
                        .stream(true)
                        .stdout(true)
                        .stderr(true)
                        .logs(false)
                        .build(),
                ),
            )
            .await
            .map_err(|e| EngineError::docker(format!("attaching to `{}`", plan.name), e))?;
        let logs = tokio::spawn(forward_output(attach.output, name.clone(), log));
        if let Err(e) = self.docker.start_container(&name, None).await {
            logs.abort();
            return Err(EngineError::docker(
                format!("starting container for `{}`", plan.name),
                e,
            ));
        }
        Ok(DockerProcess {
            name,
            logs: Some(logs),
        })
    }

    async fn wait(&self, process: &mut DockerProcess) -> Result<i64, EngineError> {
        // The output stream ends when the container's stdio closes; waiting for it first
        // means every line is emitted before the step is reported finished.
        if let Some(logs) = process.logs.as_mut() {
            let _ = logs.await;
            process.logs = None;
        }
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut wait = self.docker.wait_container(&process.name, Some(options));
        match wait.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard turns a non-zero exit into an error; for us it is just the exit code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(EngineError::docker("waiting for a container", e)),
            None => {
                let inspect = self
                    .docker
                    .inspect_container(&process.name, None)
                    .await
                    .map_err(|e| EngineError::docker("inspecting a container", e))?;
                Ok(inspect.state.and_then(|s| s.exit_code).unwrap_or(-1))
            }
        }
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
        if let Some(logs) = process.logs {
            logs.abort();
        }
        let force = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self
            .docker
            .remove_container(&process.name, Some(force))
            .await
        {
            Ok(()) => self.created().containers.retain(|c| *c != process.name),
            Err(e) if is_not_found(&e) => self.created().containers.retain(|c| *c != process.name),
            // Left in the list: teardown tries again.
            Err(e) => tracing::warn!("removing container {}: {e}", process.name),
        }
    }

    async fn teardown(&self) {
        let Created {
            containers,
            volumes,
            network,
        } = std::mem::take(&mut *self.created());
        let force = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let results = futures_util::future::join_all(
            containers
                .iter()
                .map(|name| self.docker.remove_container(name, Some(force.clone()))),
        )
        .await;
        for (name, result) in containers.iter().zip(results) {
            match result {
                Err(e) if !is_not_found(&e) => tracing::warn!("removing container {name}: {e}"),
                _ => {}
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
    }
}

/// Turns a container's output into its log until the container's stdio closes.
async fn forward_output(
    mut output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    container: String,
    log: StepLog,
) {
    // One splitter per stream: interleaved chunks of stdout and stderr must not be glued
    // into one line.
    let (mut stdout, mut stderr) = (log.stream(), log.stream());
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                stdout.push(&message)
            }
            Ok(LogOutput::StdErr { message }) => stderr.push(&message),
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::debug!("output stream of {container} ended: {e}");
                break;
            }
        }
    }
    stdout.finish();
    stderr.finish();
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
