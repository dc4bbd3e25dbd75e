//! [`SwarmTarget`]: the [`Target`] trait on a Docker Swarm, through a manager's API
//! (services, tasks, nodes, overlay networks; bollard), never `docker stack deploy`.
//!
//! What a rollout calls a *container* is here **a replicated Swarm service with exactly one
//! task**, named as the container would be and carrying the same `io.slipway.*` labels
//! (on the service and on its task's container spec). A rollout scales the service, not
//! Swarm: [`Target::create_container`] creates it with 0 replicas,
//! [`Target::start_container`] scales it to 1, [`Target::stop_container`] to 0,
//! [`Target::remove_container`] removes it. So Slipway, not Swarm, chooses which task
//! drains and when it stops: a Swarm scale-down picks its victim itself and stops it at
//! once, cutting its in-flight requests; here a task leaves the proxy's route and drains
//! before its service is scaled to 0. The rollout's health gate, traffic shift, drain,
//! bake and rollback are the same code as on one engine.
//!
//! The service spec:
//! - the image pinned by digest (`repo@sha256:…`): the one given when pinned, else the
//!   digest the registry gives for the tag (`GET /distribution/NAME/json`, no pull) or the
//!   manager's `RepoDigests`; an image that was never in a registry is pinned to its image
//!   id (`sha256:…`, which runs on the nodes that have it, e.g. a single-node swarm);
//! - the registry credential ([`SwarmTarget::with_registry_auth`], or the one a pull was
//!   given) sent as `X-Registry-Auth` on every create and update, so every node can pull;
//! - env, command/entrypoint, user, working dir, labels, health check (`HealthConfig`:
//!   Swarm reports a task `running` only once its container is healthy, and fails it when
//!   unhealthy), stop signal and grace, resources (limits and reservations), restart policy
//!   (`none`, `any`, `on-failure` with max attempts), placement (constraints and spread
//!   preferences), mounts (named volumes carry their labels, so the node a task lands on
//!   creates them labelled), networks (overlay, attachable) with aliases;
//! - `UpdateConfig` and `RollbackConfig` with `FailureAction: continue`: Swarm never rolls
//!   back or pauses on its own; rollbacks are the rollout's. (The task template is never
//!   updated anyway: a new revision is a new service.)
//!
//! How the proxy reaches tasks on every node: each of the spec's
//! [`ContainerSpec::proxied_ports`] (a rollout adds the service's port) is published in
//! `host` mode with no published port, so the engine of the node the task lands on binds an
//! ephemeral port (always free there; the routing mesh of an `ingress` port needs IPVS and
//! balances by itself, which would take the choice of backend away from the proxy). The
//! task's `Status.PortStatus` says which port, the node's `Status.Addr` (its advertise
//! address) where: [`ContainerInfo::endpoints`] holds `node address:published port` by
//! container port, and the rollout routes to that ([`ContainerInfo::endpoint`]); the
//! proxy is on no overlay network, so [`ContainerInfo::networks`] names a task's networks
//! with no IP (a task whose port status has no published port yet is not reachable, and
//! the health gate waits). Of the two entries an engine reports for one port binding
//! (IPv4, then IPv6: they may differ), the first is taken.
//!
//! What a task is doing: its service's newest task whose desired state is `running` (else
//! its newest task); when its container is on this engine, the container's own state and
//! health verdict; else the task's state (`running` once healthy, as said above).
//!
//! Limits: a task restarted by its restart policy is a new task on a new ephemeral port
//! (the rollout's drain sees it as gone); the stop grace is the one the service was
//! created with (the spec's `stop_grace`, which is what a rollout stops with).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, Limit, LocalNodeState, Mount, MountType,
    MountVolumeOptions, NetworkAttachmentConfig, ResourceObject, Service, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, Task, TaskSpec, TaskSpecContainerSpec,
    TaskSpecPlacement, TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    ListServicesOptionsBuilder, ListTasksOptionsBuilder, UpdateServiceOptionsBuilder,
};

use super::{
    ContainerInfo, ContainerSpec, DockerTarget, EngineHealth, Ensured, MountKind, Owner,
    RegistryAuth, RestartPolicy, RunState, Selector, Target, TargetError, container_name,
    ensure_network_on, ensure_volume_on, health_config, is_not_found, nanos, object_labels,
    split_reference,
};

/// A Docker Swarm, through one of its managers.
#[derive(Debug)]
pub struct SwarmTarget {
    /// The manager's engine, as a single-engine target (images, volumes and the
    /// containers of the tasks that run on it).
    local: DockerTarget,
    /// The credential nodes pull with, by registry host (`""`: any).
    auth: Mutex<HashMap<String, RegistryAuth>>,
    /// Digests the registry gave for tags, by reference.
    digests: Mutex<HashMap<String, String>>,
    /// Node addresses, by node id.
    nodes: Mutex<HashMap<String, IpAddr>>,
}

impl Clone for SwarmTarget {
    fn clone(&self) -> SwarmTarget {
        fn copy<V: Clone>(m: &Mutex<HashMap<String, V>>) -> Mutex<HashMap<String, V>> {
            Mutex::new(m.lock().map(|m| m.clone()).unwrap_or_default())
        }
        SwarmTarget {
            local: self.local.clone(),
            auth: copy(&self.auth),
            digests: copy(&self.digests),
            nodes: copy(&self.nodes),
        }
    }
}

/// Service names: DNS labels (letters, digits, `-`), 63 characters at most.
fn service_name(owner: &Owner) -> String {
    let raw = container_name(owner);
    let mut name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if name.len() > 63 {
        // Keep the unique tail (replica and nonce).
        let tail = name.split_off(name.len() - 20);
        name.truncate(63 - 20);
        name.push_str(&tail);
    }
    name.trim_matches('-').to_owned()
}

/// The registry host of a reference (`docker.io` when it names none).
fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

fn credentials(auth: &RegistryAuth) -> DockerCredentials {
    DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(auth.password.clone()),
        serveraddress: auth.server.clone(),
        ..Default::default()
    }
}

fn task_state(s: Option<TaskState>) -> RunState {
    match s {
        Some(TaskState::RUNNING) => RunState::Running,
        Some(
            TaskState::NEW
            | TaskState::ALLOCATED
            | TaskState::PENDING
            | TaskState::ASSIGNED
            | TaskState::ACCEPTED
            | TaskState::PREPARING
            | TaskState::READY
            | TaskState::STARTING,
        ) => RunState::Created,
        Some(TaskState::COMPLETE | TaskState::SHUTDOWN | TaskState::FAILED) => RunState::Exited,
        Some(TaskState::REJECTED | TaskState::ORPHANED) => RunState::Dead,
        Some(TaskState::REMOVE) => RunState::Removing,
        _ => RunState::Unknown,
    }
}

/// A task's time, for picking the newest.
fn task_time(t: &Task) -> (u64, String) {
    (
        t.version.as_ref().and_then(|v| v.index).unwrap_or(0),
        t.created_at
            .as_ref()
            .map(|d| format!("{d:?}"))
            .unwrap_or_default(),
    )
}

/// The task that stands for the service: the newest one meant to run, else the newest.
fn current_task(tasks: &[Task]) -> Option<&Task> {
    tasks
        .iter()
        .filter(|t| t.desired_state == Some(TaskState::RUNNING))
        .max_by_key(|t| task_time(t))
        .or_else(|| tasks.iter().max_by_key(|t| task_time(t)))
}

fn replicas(s: &Service) -> i64 {
    s.spec
        .as_ref()
        .and_then(|s| s.mode.as_ref())
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(0)
}

impl SwarmTarget {
    /// Connects to the local engine, which must be an active swarm manager.
    pub async fn connect() -> Result<SwarmTarget, TargetError> {
        let local = DockerTarget::connect().await?;
        SwarmTarget::from_docker(local.docker().clone()).await
    }

    /// A target on an engine already connected; it must be an active swarm manager.
    pub async fn from_docker(docker: Docker) -> Result<SwarmTarget, TargetError> {
        let info = docker
            .info()
            .await
            .map_err(|e| TargetError::api("reading the engine's info", e))?;
        let swarm = info.swarm.unwrap_or_default();
        let active = swarm.local_node_state == Some(LocalNodeState::ACTIVE);
        if !active || swarm.control_available != Some(true) {
            let state = swarm
                .local_node_state
                .map_or_else(|| "unknown".to_owned(), |s| format!("{s:?}").to_lowercase());
            return Err(TargetError::NotSwarmManager {
                state: if active { "a worker".to_owned() } else { state },
            });
        }
        Ok(SwarmTarget {
            local: DockerTarget::with_docker(docker),
            auth: Mutex::new(HashMap::new()),
            digests: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
        })
    }

    /// The credential the nodes pull images with (from any registry unless `auth.server`
    /// names one).
    pub fn with_registry_auth(self, auth: RegistryAuth) -> SwarmTarget {
        self.remember_auth(&auth);
        self
    }

    fn remember_auth(&self, auth: &RegistryAuth) {
        if let Ok(mut m) = self.auth.lock() {
            m.insert(auth.server.clone().unwrap_or_default(), auth.clone());
        }
    }

    fn auth_for(&self, image: &str) -> Option<DockerCredentials> {
        let m = self.auth.lock().ok()?;
        let registry = registry_of(image);
        m.get(registry).or_else(|| m.get("")).map(credentials)
    }

    pub fn docker(&self) -> &Docker {
        self.local.docker()
    }

    /// `image` pinned by digest for the service spec.
    async fn pin(&self, image: &str) -> Result<String, TargetError> {
        if image.contains('@') {
            return Ok(image.to_owned());
        }
        let cached = self.digests.lock().ok().and_then(|m| m.get(image).cloned());
        if let Some(pinned) = cached {
            return Ok(pinned);
        }
        match self.docker().inspect_image(image).await {
            Ok(inspected) => {
                let (repository, _) = split_reference(image);
                let digest = inspected
                    .repo_digests
                    .unwrap_or_default()
                    .into_iter()
                    .find(|d| d.split_once('@').is_some_and(|(r, _)| r == repository));
                if let Some(d) = digest {
                    return Ok(d);
                }
                if let Some(id) = inspected.id {
                    tracing::warn!(
                        image,
                        id,
                        "the image was never in a registry: pinned to its id, only nodes that have it can run it"
                    );
                    return Ok(id);
                }
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(TargetError::api(format!("inspecting image {image}"), e)),
        }
        match self.registry_digest(image).await {
            Ok(pinned) => Ok(pinned),
            Err(reason) => Err(TargetError::Pull {
                image: image.to_owned(),
                reason: format!("cannot pin it to a digest: {reason}"),
            }),
        }
    }

    /// The registry's digest for `image` (no pull), remembered.
    async fn registry_digest(&self, image: &str) -> Result<String, String> {
        let inspected = self
            .docker()
            .inspect_registry_image(image, self.auth_for(image))
            .await
            .map_err(|e| e.to_string())?;
        let digest = inspected
            .descriptor
            .digest
            .filter(|d| !d.is_empty())
            .ok_or("the registry gave no digest")?;
        let (repository, _) = split_reference(image);
        let pinned = format!("{repository}@{digest}");
        if let Ok(mut m) = self.digests.lock() {
            m.insert(image.to_owned(), pinned.clone());
        }
        Ok(pinned)
    }

    async fn node_addr(&self, node_id: &str) -> Option<IpAddr> {
        if let Some(ip) = self.nodes.lock().ok().and_then(|m| m.get(node_id).copied()) {
            return Some(ip);
        }
        let node = self.docker().inspect_node(node_id).await.ok()?;
        let status = node
            .status
            .and_then(|s| s.addr)
            .and_then(|a| a.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified());
        // A manager may report 0.0.0.0; its manager address says where it is.
        let ip = status.or_else(|| {
            node.manager_status
                .and_then(|m| m.addr)
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|a| a.ip())
        })?;
        if let Ok(mut m) = self.nodes.lock() {
            m.insert(node_id.to_owned(), ip);
        }
        Some(ip)
    }

    fn service_spec(
        name: &str,
        owner: &Owner,
        spec: &ContainerSpec,
        image: String,
        replicas: i64,
    ) -> ServiceSpec {
        let labels = object_labels(owner, spec);
        let mounts: Vec<Mount> = spec
            .mounts
            .iter()
            .map(|m| Mount {
                target: Some(m.target.clone()),
                source: (m.kind != MountKind::Tmpfs).then(|| m.source.clone()),
                typ: Some(match m.kind {
                    MountKind::Volume => MountType::VOLUME,
                    MountKind::Bind => MountType::BIND,
                    MountKind::Tmpfs => MountType::TMPFS,
                }),
                read_only: Some(m.read_only),
                // The node a task lands on creates a missing volume, with these labels.
                volume_options: (m.kind == MountKind::Volume).then(|| MountVolumeOptions {
                    labels: Some(
                        Owner {
                            service: "-".into(),
                            revision: "-".into(),
                            replica: None,
                            ..owner.clone()
                        }
                        .labels()
                        .into_iter()
                        .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let restart_policy = Some(match spec.restart {
            RestartPolicy::No => TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            },
            RestartPolicy::Always | RestartPolicy::UnlessStopped => TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                ..Default::default()
            },
            RestartPolicy::OnFailure { max_retries } => TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
                max_attempts: max_retries.map(i64::from),
                ..Default::default()
            },
        });
        let r = &spec.resources;
        let resources = TaskSpecResources {
            limits: Some(Limit {
                nano_cpus: r.nano_cpus,
                memory_bytes: r.memory_bytes,
                pids: r.pids_limit,
            }),
            reservations: Some(ResourceObject {
                nano_cpus: r.reserve_nano_cpus,
                memory_bytes: r.reserve_memory_bytes,
                generic_resources: None,
            }),
            ..Default::default()
        };
        let placement = TaskSpecPlacement {
            constraints: (!spec.placement.constraints.is_empty())
                .then(|| spec.placement.constraints.clone()),
            preferences: (!spec.placement.spread.is_empty()).then(|| {
                spec.placement
                    .spread
                    .iter()
                    .map(|d| TaskSpecPlacementPreferences {
                        spread: Some(TaskSpecPlacementSpread {
                            spread_descriptor: Some(d.clone()),
                        }),
                    })
                    .collect()
            }),
            ..Default::default()
        };
        let networks: Vec<NetworkAttachmentConfig> = spec
            .networks
            .iter()
            .map(|n| NetworkAttachmentConfig {
                target: Some(n.name.clone()),
                aliases: (!n.aliases.is_empty()).then(|| n.aliases.clone()),
                driver_opts: None,
            })
            .collect();
        let ports: Vec<EndpointPortConfig> = spec
            .proxied_ports
            .iter()
            .map(|p| EndpointPortConfig {
                protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                target_port: Some(i64::from(*p)),
                // None: the node's engine binds an ephemeral port, free wherever it lands.
                published_port: None,
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                name: None,
            })
            .collect();
        // Docker's entrypoint and cmd are Swarm's command and args.
        let (command, args) = (spec.entrypoint.clone(), spec.command.clone());
        let grace = spec.stop_grace.unwrap_or(Duration::from_secs(10));
        ServiceSpec {
            name: Some(name.to_owned()),
            labels: Some(labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image),
                    labels: Some(labels),
                    command,
                    args,
                    env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    dir: spec.working_dir.clone(),
                    user: spec.user.clone(),
                    mounts: (!mounts.is_empty()).then_some(mounts),
                    stop_signal: spec.stop_signal.clone(),
                    stop_grace_period: nanos(Some(grace)),
                    health_check: spec.healthcheck.as_ref().map(health_config),
                    ..Default::default()
                }),
                resources: Some(resources),
                restart_policy,
                placement: Some(placement),
                networks: (!networks.is_empty()).then_some(networks),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(replicas),
                }),
                ..Default::default()
            }),
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(1),
                failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE),
                ..Default::default()
            }),
            rollback_config: Some(ServiceSpecRollbackConfig {
                parallelism: Some(1),
                failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::CONTINUE),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::VIP),
                ports: (!ports.is_empty()).then_some(ports),
            }),
            ..Default::default()
        }
    }

    async fn create_service(
        &self,
        owner: &Owner,
        spec: &ContainerSpec,
        replicas: i64,
    ) -> Result<ContainerInfo, TargetError> {
        if spec.image.trim().is_empty() {
            return Err(TargetError::Invalid("the image is empty".to_owned()));
        }
        let name = spec.name.clone().unwrap_or_else(|| service_name(owner));
        let image = self.pin(&spec.image).await?;
        let body = Self::service_spec(&name, owner, spec, image.clone(), replicas);
        self.docker()
            .create_service(body, self.auth_for(&spec.image))
            .await
            .map_err(|e| TargetError::api(format!("creating swarm service {name}"), e))?;
        let what = if replicas > 0 { "started" } else { "created" };
        tracing::info!(service = %name, %image, "{what} swarm service");
        match self.inspect_container(&name).await {
            Ok(Some(info)) => Ok(info),
            Ok(None) => Err(TargetError::NotFound {
                kind: "service",
                name,
            }),
            Err(e) => {
                let _ = self.docker().delete_service(&name).await;
                Err(e)
            }
        }
    }

    /// The service `id` when it is Slipway's; `None` when it does not exist.
    async fn ours(&self, id: &str) -> Result<Option<Service>, TargetError> {
        let service = match self.docker().inspect_service(id, None).await {
            Ok(s) => s,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => {
                return Err(TargetError::api(
                    format!("inspecting swarm service {id}"),
                    e,
                ));
            }
        };
        let labels = service.spec.as_ref().and_then(|s| s.labels.as_ref());
        DockerTarget::check_ours("service", id, labels)?;
        Ok(Some(service))
    }

    /// Sets the service's replicas (retrying when another update came between).
    async fn scale(&self, id: &str, to: i64) -> Result<(), TargetError> {
        let mut attempt = 0;
        loop {
            let Some(service) = self.ours(id).await? else {
                return Err(TargetError::NotFound {
                    kind: "service",
                    name: id.to_owned(),
                });
            };
            if replicas(&service) == to {
                return Ok(());
            }
            let version = service.version.as_ref().and_then(|v| v.index).unwrap_or(0);
            let mut spec = service.spec.unwrap_or_default();
            spec.mode = Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(to) }),
                ..Default::default()
            });
            let image = spec
                .task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let options = UpdateServiceOptionsBuilder::new()
                .version(i32::try_from(version).unwrap_or(i32::MAX))
                .build();
            match self
                .docker()
                .update_service(id, spec, options, self.auth_for(&image))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 5 && !is_not_found(&e) => {
                    tracing::debug!(service = id, error = %e, "scaling; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(TargetError::api(
                        format!("scaling swarm service {id} to {to}"),
                        e,
                    ));
                }
            }
        }
    }

    async fn tasks(&self, service_id: &str) -> Result<Vec<Task>, TargetError> {
        let filters = HashMap::from([("service", vec![service_id])]);
        self.docker()
            .list_tasks(Some(
                ListTasksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(|e| TargetError::api(format!("listing the tasks of {service_id}"), e))
    }

    /// A service and its current task as a container.
    async fn describe(&self, service: Service) -> Result<ContainerInfo, TargetError> {
        let id = service.id.clone().unwrap_or_default();
        let spec = service.spec.clone().unwrap_or_default();
        let name = spec.name.clone().unwrap_or_else(|| id.clone());
        let labels: BTreeMap<String, String> = spec
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let networks_wanted: Vec<String> = spec
            .task_template
            .as_ref()
            .and_then(|t| t.networks.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|n| n.target.clone())
            .collect();
        let tasks = self.tasks(&id).await?;
        let mut info = ContainerInfo {
            id,
            name,
            labels,
            state: RunState::Created,
            health: EngineHealth::None,
            exit_code: None,
            networks: BTreeMap::new(),
            endpoints: BTreeMap::new(),
        };
        let has_check = spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.health_check.as_ref())
            .and_then(|h| h.test.as_ref())
            .is_some_and(|t| t.first().is_some_and(|c| c != "NONE"));
        let Some(task) = current_task(&tasks) else {
            // Never started (created ahead), or stopped and its tasks gone.
            return Ok(info);
        };
        let status = task.status.clone().unwrap_or_default();
        let meant_to_run = task.desired_state == Some(TaskState::RUNNING) && replicas(&service) > 0;
        info.state = task_state(status.state);
        info.exit_code = status.container_status.as_ref().and_then(|c| c.exit_code);
        info.health = match (has_check, status.state) {
            (false, _) => EngineHealth::None,
            (true, Some(TaskState::RUNNING)) => EngineHealth::Healthy,
            (true, Some(TaskState::FAILED)) => EngineHealth::Unhealthy,
            (true, _) => EngineHealth::Starting,
        };
        // On this node, its container says more (its health while it starts, its IPs).
        let container = status
            .container_status
            .as_ref()
            .and_then(|c| c.container_id.clone())
            .filter(|c| !c.is_empty());
        let mut local = false;
        if let Some(cid) = container
            && let Some(c) = self.local.inspect_container(&cid).await?
        {
            local = true;
            // Overlay IPs are not reachable from the proxy (it is on no overlay): a task is
            // reached at its endpoints only, never at `ip_on` (a task whose port is not
            // published yet has no address).
            info.networks = c.networks.into_keys().map(|n| (n, None)).collect();
            if meant_to_run {
                info.state = c.state;
                info.health = c.health;
                info.exit_code = c.exit_code.or(info.exit_code);
            }
        }
        if !local {
            info.networks = networks_wanted.into_iter().map(|n| (n, None)).collect();
        }
        if !meant_to_run && info.state == RunState::Running {
            // Being stopped: it is on its way out.
            info.state = RunState::Removing;
        }
        if info.state == RunState::Running
            && let Some(node) = task.node_id.as_deref()
            && let Some(ip) = self.node_addr(node).await
        {
            for p in status
                .port_status
                .as_ref()
                .and_then(|p| p.ports.as_ref())
                .into_iter()
                .flatten()
            {
                let (Some(target), Some(published)) = (p.target_port, p.published_port) else {
                    continue;
                };
                if p.publish_mode != Some(EndpointPortConfigPublishModeEnum::HOST) {
                    continue;
                }
                if let (Ok(target), Ok(published)) =
                    (u16::try_from(target), u16::try_from(published))
                {
                    info.endpoints
                        .entry(target)
                        .or_insert(SocketAddr::new(ip, published));
                }
            }
        }
        Ok(info)
    }

    /// Waits (up to `within`) until no task of the service runs.
    async fn wait_stopped(&self, id: &str, within: Duration) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let tasks = self.tasks(id).await?;
            // A task past `pending` may have a container that still runs.
            let running = tasks.iter().any(|t| {
                matches!(
                    t.status.as_ref().and_then(|s| s.state),
                    Some(
                        TaskState::ASSIGNED
                            | TaskState::ACCEPTED
                            | TaskState::PREPARING
                            | TaskState::READY
                            | TaskState::STARTING
                            | TaskState::RUNNING
                    )
                )
            });
            if !running {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(service = id, "its task had not stopped in time");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Target for SwarmTarget {
    async fn ensure_network(&self, name: &str, owner: &Owner) -> Result<Ensured, TargetError> {
        ensure_network_on(self.docker(), name, owner, "overlay").await
    }

    /// On the manager, as on one engine; every other node creates it (labelled) when a task
    /// that mounts it lands there.
    async fn ensure_volume(&self, name: &str, owner: &Owner) -> Result<Ensured, TargetError> {
        ensure_volume_on(self.docker(), name, owner).await
    }

    async fn run_container(
        &self,
        owner: &Owner,
        spec: &ContainerSpec,
    ) -> Result<ContainerInfo, TargetError> {
        self.create_service(owner, spec, 1).await
    }

    async fn create_container(
        &self,
        owner: &Owner,
        spec: &ContainerSpec,
    ) -> Result<ContainerInfo, TargetError> {
        self.create_service(owner, spec, 0).await
    }

    async fn inspect_container(&self, id: &str) -> Result<Option<ContainerInfo>, TargetError> {
        match self.docker().inspect_service(id, None).await {
            Ok(s) => Ok(Some(self.describe(s).await?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(TargetError::api(
                format!("inspecting swarm service {id}"),
                e,
            )),
        }
    }

    async fn start_container(&self, id: &str) -> Result<(), TargetError> {
        self.scale(id, 1).await
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), TargetError> {
        if self.ours(id).await?.is_none() {
            return Ok(());
        }
        self.scale(id, 0).await?;
        self.wait_stopped(id, grace + Duration::from_secs(15)).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), TargetError> {
        if self.ours(id).await?.is_none() {
            return Ok(());
        }
        match self.docker().delete_service(id).await {
            Err(e) if !is_not_found(&e) => {
                Err(TargetError::api(format!("removing swarm service {id}"), e))
            }
            _ => Ok(()),
        }
    }

    async fn list_containers(
        &self,
        selector: &Selector,
    ) -> Result<Vec<ContainerInfo>, TargetError> {
        let labels = selector.filters();
        let filters = HashMap::from([(
            "label",
            labels.iter().map(String::as_str).collect::<Vec<_>>(),
        )]);
        let listed = self
            .docker()
            .list_services(Some(
                ListServicesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(|e| TargetError::api("listing swarm services", e))?;
        let mut out = Vec::new();
        for s in listed {
            let ok = s
                .spec
                .as_ref()
                .and_then(|s| s.labels.as_ref())
                .is_some_and(|l| selector.matches(l));
            if ok {
                out.push(self.describe(s).await?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove_network(&self, name: &str) -> Result<(), TargetError> {
        self.local.remove_network(name).await
    }

    async fn remove_volume(&self, name: &str) -> Result<(), TargetError> {
        self.local.remove_volume(name).await
    }

    /// The manager asks the registry for the digest (no pull), and the nodes pull it with
    /// `auth`; a registry that cannot say is pulled from here, as on one engine.
    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<(), TargetError> {
        if let Some(a) = auth {
            let mut a = a.clone();
            a.server
                .get_or_insert_with(|| registry_of(image).to_owned());
            self.remember_auth(&a);
        }
        if image.contains('@') {
            return Ok(());
        }
        match self.registry_digest(image).await {
            Ok(pinned) => {
                tracing::info!(image, pinned, "resolved by the registry");
                Ok(())
            }
            Err(reason) => {
                tracing::debug!(image, reason, "the registry gave no digest: pulling");
                self.local.pull_image(image, auth).await
            }
        }
    }

    async fn resolve_digest(&self, image: &str) -> Result<Option<String>, TargetError> {
        if image.contains('@') {
            return Ok(Some(image.to_owned()));
        }
        let cached = self.digests.lock().ok().and_then(|m| m.get(image).cloned());
        if cached.is_some() {
            return Ok(cached);
        }
        self.local.resolve_digest(image).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Healthcheck, NetworkAttachment};

    fn owner() -> Owner {
        Owner {
            env: "prod".into(),
            stack: "shop".into(),
            service: "web".into(),
            revision: "3".into(),
            replica: Some(2),
        }
    }

    #[test]
    fn service_names_are_dns_labels() {
        let long = Owner {
            env: "an_environment.with-a-very-long-name".into(),
            stack: "stack".into(),
            service: "service_name".into(),
            revision: "12".into(),
            replica: Some(3),
        };
        let name = service_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{name}"
        );
        assert!(name.contains("-12-3-"), "{name}");
    }

    #[test]
    fn the_spec_publishes_proxied_ports_in_host_mode_and_never_lets_swarm_roll_back() {
        let spec = ContainerSpec {
            image: "x".into(),
            command: Some(vec!["httpd".into()]),
            networks: vec![NetworkAttachment {
                name: "net".into(),
                aliases: vec!["web".into()],
            }],
            healthcheck: Some(Healthcheck {
                test: vec!["CMD".into(), "true".into()],
                interval: Some(Duration::from_secs(1)),
                timeout: None,
                retries: Some(2),
                start_period: None,
            }),
            restart: RestartPolicy::OnFailure {
                max_retries: Some(3),
            },
            proxied_ports: vec![8080],
            labels: BTreeMap::from([(super::super::LABEL_ENV.to_owned(), "forged".to_owned())]),
            ..ContainerSpec::default()
        };
        let s = SwarmTarget::service_spec("n", &owner(), &spec, "x@sha256:00".into(), 0);
        let labels = s.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(super::super::LABEL_ENV).map(String::as_str),
            Some("prod")
        );
        assert_eq!(
            labels.get(super::super::LABEL_REPLICA).map(String::as_str),
            Some("2")
        );
        let t = s.task_template.clone().unwrap_or_default();
        let c = t.container_spec.clone().unwrap_or_default();
        assert_eq!(c.image.as_deref(), Some("x@sha256:00"));
        assert_eq!(c.args, Some(vec!["httpd".to_owned()]));
        assert_eq!(c.command, None);
        assert_eq!(c.labels, s.labels);
        assert!(c.health_check.is_some());
        let restart = t.restart_policy.unwrap_or_default();
        assert_eq!(
            restart.condition,
            Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE)
        );
        assert_eq!(restart.max_attempts, Some(3));
        let ports = s.endpoint_spec.and_then(|e| e.ports).unwrap_or_default();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].target_port, Some(8080));
        assert_eq!(ports[0].published_port, None);
        assert_eq!(
            ports[0].publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
        assert_eq!(
            s.update_config.and_then(|u| u.failure_action),
            Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE)
        );
        assert_eq!(
            s.rollback_config.and_then(|u| u.failure_action),
            Some(ServiceSpecRollbackConfigFailureActionEnum::CONTINUE)
        );
        assert_eq!(
            s.mode.and_then(|m| m.replicated).and_then(|r| r.replicas),
            Some(0)
        );
    }

    #[test]
    fn registries_are_read_from_references() {
        assert_eq!(registry_of("127.0.0.1:5000/team/app:1"), "127.0.0.1:5000");
        assert_eq!(
            registry_of("registry.example.com/app"),
            "registry.example.com"
        );
        assert_eq!(registry_of("team/app"), "docker.io");
        assert_eq!(registry_of("busybox"), "docker.io");
    }
}
