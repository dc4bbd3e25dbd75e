//! Where a service's containers run: the [`Target`] trait, and [`DockerTarget`], its
//! implementation on one Docker engine (bollard; the API version is negotiated, so
//! Debian's 20.10 engine, API 1.41, works).
//!
//! A rollout asks a target for little: a network and named volumes to exist
//! ([`Target::ensure_network`], [`Target::ensure_volume`]), a container made from a
//! [`ContainerSpec`] and started ([`Target::run_container`]), what it is doing
//! ([`Target::inspect_container`]: state, the engine's health verdict, its IP on each
//! network), to be stopped with a grace period, started again (a rollback), removed, and
//! the containers of a service listed ([`Target::list_containers`] by a [`Selector`]).
//! Images: [`Target::pull_image`] (a no-op when an image pinned by digest is already
//! there) and [`Target::resolve_digest`] (a tag to `repo@sha256:…`, from `RepoDigests`).
//! The trait's futures are `Send` and it needs no `dyn`: [`SwarmTarget`] (a one-task
//! service per container, see [`swarm`]) implements the same calls. Where the proxy
//! reaches a container is [`ContainerInfo::endpoint`]: a published endpoint when the
//! target gives one (Swarm), else its IP on the service's network.
//!
//! Invariants:
//! - Everything Slipway creates carries the labels of its [`Owner`]: [`LABEL_ENV`],
//!   [`LABEL_STACK`], [`LABEL_SERVICE`], [`LABEL_REVISION`] (and [`LABEL_REPLICA`] on a
//!   container); a spec's own labels cannot override them.
//! - Listing and removal only ever touch objects with all four labels: the engine is
//!   asked with label filters and every answer is checked again here, and removing an
//!   object without them is refused ([`TargetError::NotOurs`]), so a container, network
//!   or volume Slipway did not create is never touched.
//! - An existing network or volume without Slipway's labels is used as it is (an
//!   `external` one, the proxy's network) and never removed; one labelled for another
//!   environment or stack is refused.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, EndpointSettings, HealthConfig,
    HealthStatusEnum, HostConfig, Mount, MountType, NetworkConnectRequest, NetworkCreateRequest,
    NetworkingConfig, RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// The environment (`production`, `staging`) an object belongs to.
pub const LABEL_ENV: &str = "io.slipway.env";
/// The stack, within its environment.
pub const LABEL_STACK: &str = "io.slipway.stack";
/// The service, within its stack (`-` on a stack's shared network or volume).
pub const LABEL_SERVICE: &str = "io.slipway.service";
/// The revision that created it.
pub const LABEL_REVISION: &str = "io.slipway.revision";
/// A container's replica number within its revision (from 1).
pub const LABEL_REPLICA: &str = "io.slipway.replica";

/// A container's log records start at lines matching this regular expression; others are
/// joined to the record before them (`x-slipway.logs.multiline`).
pub const LABEL_LOGS_MULTILINE: &str = "io.slipway.logs.multiline";
/// How long a joined record waits for more lines (`x-slipway.logs.multiline_timeout`).
pub const LABEL_LOGS_MULTILINE_TIMEOUT: &str = "io.slipway.logs.multiline-timeout";
/// `true`: JSON-object lines are parsed into fields (`x-slipway.logs.json`).
pub const LABEL_LOGS_JSON: &str = "io.slipway.logs.json";

pub mod swarm;
pub use swarm::SwarmTarget;

/// The labels every Slipway object must carry to be listed or removed.
pub const REQUIRED_LABELS: [&str; 4] = [LABEL_ENV, LABEL_STACK, LABEL_SERVICE, LABEL_REVISION];

/// Who an object belongs to; written on it as labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub env: String,
    pub stack: String,
    pub service: String,
    pub revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
}

impl Owner {
    /// The labels this owner puts on an object.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (LABEL_ENV.to_owned(), self.env.clone()),
            (LABEL_STACK.to_owned(), self.stack.clone()),
            (LABEL_SERVICE.to_owned(), self.service.clone()),
            (LABEL_REVISION.to_owned(), self.revision.clone()),
        ]);
        if let Some(r) = self.replica {
            labels.insert(LABEL_REPLICA.to_owned(), r.to_string());
        }
        labels
    }

    /// The owner the labels name, when they carry all of [`REQUIRED_LABELS`].
    pub fn from_labels<S: std::hash::BuildHasher>(
        labels: &HashMap<String, String, S>,
    ) -> Option<Owner> {
        let get = |k: &str| labels.get(k).cloned();
        Some(Owner {
            env: get(LABEL_ENV)?,
            stack: get(LABEL_STACK)?,
            service: get(LABEL_SERVICE)?,
            revision: get(LABEL_REVISION)?,
            replica: labels.get(LABEL_REPLICA).and_then(|r| r.parse().ok()),
        })
    }

    /// The same owner for replica `replica`.
    pub fn replica(&self, replica: u32) -> Owner {
        Owner {
            replica: Some(replica),
            ..self.clone()
        }
    }
}

/// Which Slipway objects a listing wants: always one environment, optionally narrowed.
/// Objects without all of [`REQUIRED_LABELS`] never match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub env: String,
    #[serde(default)]
    pub stack: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
}

impl Selector {
    /// Every object of one service, all revisions.
    pub fn service(env: &str, stack: &str, service: &str) -> Selector {
        Selector {
            env: env.to_owned(),
            stack: Some(stack.to_owned()),
            service: Some(service.to_owned()),
            revision: None,
        }
    }

    /// Every object of one stack, all services and revisions.
    pub fn stack(env: &str, stack: &str) -> Selector {
        Selector {
            env: env.to_owned(),
            stack: Some(stack.to_owned()),
            ..Selector::default()
        }
    }

    /// Every object of one environment.
    pub fn env(env: &str) -> Selector {
        Selector {
            env: env.to_owned(),
            ..Selector::default()
        }
    }

    /// The same, narrowed to one revision.
    pub fn revision(mut self, revision: &str) -> Selector {
        self.revision = Some(revision.to_owned());
        self
    }

    /// Whether an object with these labels is selected (it must carry all four labels).
    pub fn matches<S: std::hash::BuildHasher>(&self, labels: &HashMap<String, String, S>) -> bool {
        let Some(owner) = Owner::from_labels(labels) else {
            return false;
        };
        owner.env == self.env
            && self.stack.as_ref().is_none_or(|s| *s == owner.stack)
            && self.service.as_ref().is_none_or(|s| *s == owner.service)
            && self.revision.as_ref().is_none_or(|r| *r == owner.revision)
    }

    /// Docker's `label` filters: presence of every required label, and the values given.
    fn filters(&self) -> Vec<String> {
        let mut f: Vec<String> = REQUIRED_LABELS.iter().map(|l| (*l).to_owned()).collect();
        f.push(format!("{LABEL_ENV}={}", self.env));
        if let Some(s) = &self.stack {
            f.push(format!("{LABEL_STACK}={s}"));
        }
        if let Some(s) = &self.service {
            f.push(format!("{LABEL_SERVICE}={s}"));
        }
        if let Some(r) = &self.revision {
            f.push(format!("{LABEL_REVISION}={r}"));
        }
        f
    }
}

/// A network a container joins, with the names it answers to there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A named volume (created by [`Target::ensure_volume`]).
    #[default]
    Volume,
    /// A host path.
    Bind,
    /// A tmpfs (no source).
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    #[serde(default)]
    pub kind: MountKind,
    /// The volume's name or the host path; empty for a tmpfs.
    #[serde(default)]
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// The engine's own health check (a compose `healthcheck`, Docker's `HEALTHCHECK`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// As Docker has it: `["CMD", "wget", …]`, `["CMD-SHELL", "…"]`, or `["NONE"]`.
    pub test: Vec<String>,
    #[serde(default, with = "opt_duration")]
    pub interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default, with = "opt_duration")]
    pub start_period: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub enum RestartPolicy {
    No,
    Always,
    #[default]
    UnlessStopped,
    OnFailure {
        #[serde(default)]
        max_retries: Option<u32>,
    },
}

/// Resource limits; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resources {
    #[serde(default)]
    pub memory_bytes: Option<i64>,
    /// CPUs in billionths (`1.5` CPUs is `1_500_000_000`).
    #[serde(default)]
    pub nano_cpus: Option<i64>,
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// Memory the scheduler keeps for it (Swarm's reservations; the Docker target has
    /// no use for it).
    #[serde(default)]
    pub reserve_memory_bytes: Option<i64>,
    /// CPUs the scheduler keeps for it, in billionths.
    #[serde(default)]
    pub reserve_nano_cpus: Option<i64>,
}

/// Where a scheduler may put it (Swarm's `deploy.placement`); the Docker target runs
/// everything on its one engine and ignores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Placement {
    /// `node.role == worker`, `node.labels.zone == a`, …
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread descriptors (`node.labels.zone`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<String>,
}

/// One container to run. In a rollout's template, `name` and `image` are set by the
/// rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerSpec {
    /// The container's name; a unique one is made from the owner when `None`.
    #[serde(default)]
    pub name: Option<String>,
    /// A reference (`registry/repo:tag`) or, better, one pinned by digest (`repo@sha256:…`).
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The container's own labels; the owner's `io.slipway.*` labels win over these.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub networks: Vec<NetworkAttachment>,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Time between the stop signal and the kill.
    #[serde(default, with = "opt_duration")]
    pub stop_grace: Option<Duration>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub placement: Placement,
    /// Container ports Slipway's proxy must reach (a rollout adds the service's port).
    /// The Docker target needs nothing for them (the proxy reaches the container's IP on
    /// its network); Swarm publishes each in `host` mode, see [`swarm`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxied_ports: Vec<u16>,
}

/// What a container is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Created,
    Running,
    Restarting,
    Paused,
    Exited,
    Dead,
    Removing,
    Unknown,
}

/// The engine's verdict from the container's own health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineHealth {
    /// The container has no health check.
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// A container as the target sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub state: RunState,
    pub health: EngineHealth,
    pub exit_code: Option<i64>,
    /// Its IP on each network it is on (`None` while it has none, e.g. stopped).
    pub networks: BTreeMap<String, Option<IpAddr>>,
    /// Where Slipway reaches a container port from outside its networks, by container
    /// port: a Swarm task's `host`-mode published port on its node's address. Empty on
    /// the Docker target (its networks' IPs are reachable).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<u16, SocketAddr>,
}

impl ContainerInfo {
    /// Its IP on `network`.
    pub fn ip_on(&self, network: &str) -> Option<IpAddr> {
        self.networks.get(network).copied().flatten()
    }

    /// Where the proxy reaches its `port`: the published endpoint when it has one, else
    /// its IP on `network` and `port`.
    pub fn endpoint(&self, network: &str, port: u16) -> Option<SocketAddr> {
        self.endpoints
            .get(&port)
            .copied()
            .or_else(|| self.ip_on(network).map(|ip| SocketAddr::new(ip, port)))
    }

    /// Its owner, read from its labels.
    pub fn owner(&self) -> Option<Owner> {
        let labels: HashMap<String, String> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Owner::from_labels(&labels)
    }
}

/// Credentials for a registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    /// The registry's host (`registry.example.com:5000`); the image's when `None`.
    #[serde(default)]
    pub server: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("server", &self.server)
            .finish()
    }
}

/// Whether an ensured network or volume was made now, and whether it is Slipway's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ensured {
    pub created: bool,
    /// It carries Slipway's labels (an unlabelled existing one is used, never removed).
    pub managed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot reach the Docker engine (DOCKER_HOST or /var/run/docker.sock): {0}")]
    Connect(#[source] bollard::errors::Error),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{kind} `{name}` does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error(
        "{kind} `{name}` was not created by Slipway (it lacks the io.slipway.env/stack/service/revision labels): it is left alone"
    )]
    NotOurs { kind: &'static str, name: String },
    #[error("{kind} `{name}` belongs to environment `{env}`, stack `{stack}`: choose another name")]
    Taken {
        kind: &'static str,
        name: String,
        env: String,
        stack: String,
    },
    #[error("pulling image `{image}`: {reason}")]
    Pull { image: String, reason: String },
    #[error("invalid container spec: {0}")]
    Invalid(String),
    #[error(
        "the engine is not a swarm manager (its swarm state: {state}): run `docker swarm init` on it (or `docker swarm join` it as a manager), or point DOCKER_HOST at a manager"
    )]
    NotSwarmManager { state: String },
}

impl TargetError {
    fn api(what: impl Into<String>, source: bollard::errors::Error) -> TargetError {
        TargetError::Api {
            what: what.into(),
            source,
        }
    }
}

/// Where containers run. Every future is `Send`; implementations are cheap to share.
pub trait Target: Send + Sync {
    /// A network named `name` exists (bridge, labelled with `owner`, when made now).
    fn ensure_network(
        &self,
        name: &str,
        owner: &Owner,
    ) -> impl Future<Output = Result<Ensured, TargetError>> + Send;

    /// A named volume `name` exists (labelled with `owner` when made now).
    fn ensure_volume(
        &self,
        name: &str,
        owner: &Owner,
    ) -> impl Future<Output = Result<Ensured, TargetError>> + Send;

    /// Creates a container of `spec` labelled with `owner`, on its networks, and starts
    /// it. On an error, what was created is removed.
    fn run_container(
        &self,
        owner: &Owner,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<ContainerInfo, TargetError>> + Send;

    /// [`Target::run_container`] without the start: a rollout creates the next batch's
    /// containers while the current one is gated, and starts them with
    /// [`Target::start_container`]. On an error, what was created is removed.
    fn create_container(
        &self,
        owner: &Owner,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<ContainerInfo, TargetError>> + Send;

    /// The container `id` (or name), `None` when it does not exist.
    fn inspect_container(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<ContainerInfo>, TargetError>> + Send;

    /// Starts a stopped Slipway container again.
    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// Sends the stop signal, waits up to `grace`, then kills. Only Slipway containers.
    fn stop_container(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// Removes a Slipway container (and its anonymous volumes), running or not; a
    /// missing one is not an error.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// The Slipway containers `selector` selects, stopped ones too.
    fn list_containers(
        &self,
        selector: &Selector,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, TargetError>> + Send;

    /// Removes a Slipway network; a missing one is not an error.
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// Removes a Slipway volume; a missing one is not an error.
    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// Makes `image` present: pulls it, with `auth` when given. An image pinned by digest
    /// that is already present is not pulled again.
    fn pull_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// The digest reference (`repo@sha256:…`) of a present image, from its
    /// `RepoDigests` (the one of `image`'s repository); `None` when the image was never
    /// pulled from or pushed to a registry (a local build has no repo digest).
    fn resolve_digest(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<String>, TargetError>> + Send;
}

/// The local Docker engine.
#[derive(Debug, Clone)]
pub struct DockerTarget {
    docker: Docker,
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_not_modified(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

/// A spec's own labels without any `io.slipway.*`, the owner's over them.
fn object_labels(owner: &Owner, spec: &ContainerSpec) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    // Only the collector's settings (`io.slipway.logs.*`, from `x-slipway.logs`) pass:
    // who owns an object is Slipway's to say.
    labels.retain(|k, _| !k.starts_with("io.slipway.") || k.starts_with("io.slipway.logs."));
    labels.extend(owner.labels());
    labels
}

fn health_config(h: &Healthcheck) -> HealthConfig {
    HealthConfig {
        test: Some(h.test.clone()),
        interval: nanos(h.interval),
        timeout: nanos(h.timeout),
        retries: h.retries.map(i64::from),
        start_period: nanos(h.start_period),
        start_interval: None,
    }
}

/// A Docker duration (nanoseconds), at least 1 ms when set (the engine's minimum).
fn nanos(d: Option<Duration>) -> Option<i64> {
    d.map(|d| {
        i64::try_from(d.as_nanos())
            .unwrap_or(i64::MAX)
            .max(1_000_000)
    })
}

/// `repo[:tag]` or `repo@digest` split as the pull API wants them.
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

/// A container name Docker accepts, unique enough: `ENV-STACK-SERVICE-REVISION-REPLICA-RAND`.
fn container_name(owner: &Owner) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(16);
    format!(
        "{}-{}-{}-{}-{}-{:08x}",
        clean(&owner.env),
        clean(&owner.stack),
        clean(&owner.service),
        clean(&owner.revision),
        owner.replica.unwrap_or(0),
        nonce
    )
}

impl DockerTarget {
    /// Connects to the local engine (`DOCKER_HOST` or `/var/run/docker.sock`) and agrees
    /// on an API version.
    pub async fn connect() -> Result<DockerTarget, TargetError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(TargetError::Connect)?
            .negotiate_version()
            .await
            .map_err(TargetError::Connect)?;
        docker.ping().await.map_err(TargetError::Connect)?;
        Ok(DockerTarget { docker })
    }

    /// A target on an engine already connected.
    pub fn with_docker(docker: Docker) -> DockerTarget {
        DockerTarget { docker }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Whether `labels` are Slipway's; what they say otherwise.
    fn check_ours<S: std::hash::BuildHasher>(
        kind: &'static str,
        name: &str,
        labels: Option<&HashMap<String, String, S>>,
    ) -> Result<Owner, TargetError> {
        labels
            .and_then(Owner::from_labels)
            .ok_or_else(|| TargetError::NotOurs {
                kind,
                name: name.to_owned(),
            })
    }

    async fn ensure_ours_container(&self, id: &str) -> Result<Option<ContainerInfo>, TargetError> {
        match self.inspect_container(id).await? {
            None => Ok(None),
            Some(info) if info.owner().is_some() => Ok(Some(info)),
            Some(_) => Err(TargetError::NotOurs {
                kind: "container",
                name: id.to_owned(),
            }),
        }
    }

    fn create_body(owner: &Owner, spec: &ContainerSpec) -> ContainerCreateBody {
        let labels = object_labels(owner, spec);
        let healthcheck = spec.healthcheck.as_ref().map(health_config);
        let restart_policy = Some(match spec.restart {
            RestartPolicy::No => DockerRestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            },
            RestartPolicy::Always => DockerRestartPolicy {
                name: Some(RestartPolicyNameEnum::ALWAYS),
                maximum_retry_count: None,
            },
            RestartPolicy::UnlessStopped => DockerRestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            },
            RestartPolicy::OnFailure { max_retries } => DockerRestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: max_retries.map(i64::from),
            },
        });
        let mounts = spec
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
                ..Default::default()
            })
            .collect::<Vec<_>>();
        // API 1.41 takes one network at create; the others are connected before start.
        let networking_config = spec.networks.first().map(|n| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                n.name.clone(),
                EndpointSettings {
                    aliases: (!n.aliases.is_empty()).then(|| n.aliases.clone()),
                    ..Default::default()
                },
            )])),
        });
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.command.clone(),
            entrypoint: spec.entrypoint.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            healthcheck,
            stop_signal: spec.stop_signal.clone(),
            stop_timeout: spec
                .stop_grace
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            user: spec.user.clone(),
            working_dir: spec.working_dir.clone(),
            host_config: Some(HostConfig {
                restart_policy,
                mounts: (!mounts.is_empty()).then_some(mounts),
                memory: spec.resources.memory_bytes,
                nano_cpus: spec.resources.nano_cpus,
                pids_limit: spec.resources.pids_limit,
                network_mode: spec.networks.first().map(|n| n.name.clone()),
                ..Default::default()
            }),
            networking_config,
            ..Default::default()
        }
    }

    /// Creates (and with `start`, starts) the container `name`; on an error, removes
    /// what this call created.
    async fn create_named(
        &self,
        owner: &Owner,
        spec: &ContainerSpec,
        start: bool,
    ) -> Result<ContainerInfo, TargetError> {
        if spec.image.trim().is_empty() {
            return Err(TargetError::Invalid("the image is empty".to_owned()));
        }
        let name = spec.name.clone().unwrap_or_else(|| container_name(owner));
        match self.create_and_start(&name, owner, spec, start).await {
            Ok(info) => {
                let what = if start { "started" } else { "created" };
                tracing::info!(container = %name, image = %spec.image, "{what} container");
                Ok(info)
            }
            Err(e) => {
                let force = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                // Only what this call created carries these labels under this name.
                if let Ok(Some(info)) = self.inspect_container(&name).await
                    && info.owner().as_ref() == Some(owner)
                    && let Err(re) = self.docker.remove_container(&name, Some(force)).await
                {
                    tracing::warn!(container = %name, error = %re, "removing a failed container");
                }
                Err(e)
            }
        }
    }

    async fn create_and_start(
        &self,
        name: &str,
        owner: &Owner,
        spec: &ContainerSpec,
        start: bool,
    ) -> Result<ContainerInfo, TargetError> {
        let body = Self::create_body(owner, spec);
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    TargetError::Invalid(format!(
                        "image `{}` is not on this engine: pull it first",
                        spec.image
                    ))
                } else {
                    TargetError::api(format!("creating container {name}"), e)
                }
            })?;
        for n in spec.networks.iter().skip(1) {
            self.docker
                .connect_network(
                    &n.name,
                    NetworkConnectRequest {
                        container: name.to_owned(),
                        endpoint_config: Some(EndpointSettings {
                            aliases: (!n.aliases.is_empty()).then(|| n.aliases.clone()),
                            ..Default::default()
                        }),
                    },
                )
                .await
                .map_err(|e| {
                    TargetError::api(format!("connecting {name} to network {}", n.name), e)
                })?;
        }
        if start {
            self.docker
                .start_container(name, None)
                .await
                .map_err(|e| TargetError::api(format!("starting container {name}"), e))?;
        }
        self.inspect_container(name)
            .await?
            .ok_or_else(|| TargetError::NotFound {
                kind: "container",
                name: name.to_owned(),
            })
    }
}

fn run_state(s: Option<ContainerStateStatusEnum>) -> RunState {
    match s {
        Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => RunState::Running,
        Some(ContainerStateStatusEnum::RESTARTING) => RunState::Restarting,
        Some(ContainerStateStatusEnum::PAUSED) => RunState::Paused,
        Some(ContainerStateStatusEnum::EXITED) => RunState::Exited,
        Some(ContainerStateStatusEnum::DEAD) => RunState::Dead,
        Some(ContainerStateStatusEnum::REMOVING) => RunState::Removing,
        _ => RunState::Unknown,
    }
}

fn engine_health(s: Option<HealthStatusEnum>) -> EngineHealth {
    match s {
        Some(HealthStatusEnum::STARTING) => EngineHealth::Starting,
        Some(HealthStatusEnum::HEALTHY) => EngineHealth::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => EngineHealth::Unhealthy,
        _ => EngineHealth::None,
    }
}

/// A network `name` on `docker`: an existing one checked against `owner`
/// ([`ensured_existing`]), else made with `driver` (`overlay` ones attachable, so the
/// proxy's and a task's containers can join them) and `owner`'s labels.
pub(crate) async fn ensure_network_on(
    docker: &Docker,
    name: &str,
    owner: &Owner,
    driver: &str,
) -> Result<Ensured, TargetError> {
    match docker.inspect_network(name, None).await {
        Ok(existing) => ensured_existing("network", name, existing.labels.as_ref(), owner),
        Err(e) if is_not_found(&e) => {
            let labels: HashMap<String, String> = owner.labels().into_iter().collect();
            docker
                .create_network(NetworkCreateRequest {
                    name: name.to_owned(),
                    driver: Some(driver.to_owned()),
                    attachable: (driver == "overlay").then_some(true),
                    labels: Some(labels),
                    ..Default::default()
                })
                .await
                .map_err(|e| TargetError::api(format!("creating network {name}"), e))?;
            tracing::info!(network = name, driver, "created network");
            Ok(Ensured {
                created: true,
                managed: true,
            })
        }
        Err(e) => Err(TargetError::api(format!("inspecting network {name}"), e)),
    }
}

/// A named volume `name` on `docker`: an existing one checked against `owner`, else made
/// with `owner`'s labels.
pub(crate) async fn ensure_volume_on(
    docker: &Docker,
    name: &str,
    owner: &Owner,
) -> Result<Ensured, TargetError> {
    match docker.inspect_volume(name).await {
        Ok(existing) => ensured_existing("volume", name, Some(&existing.labels), owner),
        Err(e) if is_not_found(&e) => {
            let labels: HashMap<String, String> = owner.labels().into_iter().collect();
            docker
                .create_volume(VolumeCreateRequest {
                    name: Some(name.to_owned()),
                    labels: Some(labels),
                    ..Default::default()
                })
                .await
                .map_err(|e| TargetError::api(format!("creating volume {name}"), e))?;
            tracing::info!(volume = name, "created volume");
            Ok(Ensured {
                created: true,
                managed: true,
            })
        }
        Err(e) => Err(TargetError::api(format!("inspecting volume {name}"), e)),
    }
}

impl Target for DockerTarget {
    async fn ensure_network(&self, name: &str, owner: &Owner) -> Result<Ensured, TargetError> {
        ensure_network_on(&self.docker, name, owner, "bridge").await
    }

    async fn ensure_volume(&self, name: &str, owner: &Owner) -> Result<Ensured, TargetError> {
        ensure_volume_on(&self.docker, name, owner).await
    }

    async fn run_container(
        &self,
        owner: &Owner,
        spec: &ContainerSpec,
    ) -> Result<ContainerInfo, TargetError> {
        self.create_named(owner, spec, true).await
    }

    async fn create_container(
        &self,
        owner: &Owner,
        spec: &ContainerSpec,
    ) -> Result<ContainerInfo, TargetError> {
        self.create_named(owner, spec, false).await
    }

    async fn inspect_container(&self, id: &str) -> Result<Option<ContainerInfo>, TargetError> {
        let c = match self.docker.inspect_container(id, None).await {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(TargetError::api(format!("inspecting container {id}"), e)),
        };
        let state = c.state.as_ref();
        let networks = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|nets| {
                nets.iter()
                    .map(|(name, ep)| {
                        let ip = ep
                            .ip_address
                            .as_deref()
                            .filter(|ip| !ip.is_empty())
                            .and_then(|ip| ip.parse().ok());
                        (name.clone(), ip)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(ContainerInfo {
            id: c.id.clone().unwrap_or_default(),
            name: c
                .name
                .as_deref()
                .unwrap_or(id)
                .trim_start_matches('/')
                .to_owned(),
            labels: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.labels.clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
            state: run_state(state.and_then(|s| s.status)),
            health: engine_health(state.and_then(|s| s.health.as_ref()).and_then(|h| h.status)),
            exit_code: state.and_then(|s| s.exit_code),
            networks,
            endpoints: BTreeMap::new(),
        }))
    }

    async fn start_container(&self, id: &str) -> Result<(), TargetError> {
        if self.ensure_ours_container(id).await?.is_none() {
            return Err(TargetError::NotFound {
                kind: "container",
                name: id.to_owned(),
            });
        }
        match self.docker.start_container(id, None).await {
            Err(e) if !is_not_modified(&e) => {
                Err(TargetError::api(format!("starting container {id}"), e))
            }
            _ => Ok(()),
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), TargetError> {
        if self.ensure_ours_container(id).await?.is_none() {
            return Ok(());
        }
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(t).build();
        match self.docker.stop_container(id, Some(options)).await {
            Err(e) if !is_not_found(&e) && !is_not_modified(&e) => {
                Err(TargetError::api(format!("stopping container {id}"), e))
            }
            _ => Ok(()),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), TargetError> {
        if self.ensure_ours_container(id).await?.is_none() {
            return Ok(());
        }
        let force = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(force)).await {
            Err(e) if !is_not_found(&e) => {
                Err(TargetError::api(format!("removing container {id}"), e))
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
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| TargetError::api("listing containers", e))?;
        let mut out = Vec::new();
        for c in listed {
            let (Some(id), Some(labels)) = (c.id.as_deref(), c.labels.as_ref()) else {
                continue;
            };
            if !selector.matches(labels) {
                continue;
            }
            // Inspected for its networks' addresses and health; gone meanwhile is fine.
            if let Some(info) = self.inspect_container(id).await? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove_network(&self, name: &str) -> Result<(), TargetError> {
        let existing = match self.docker.inspect_network(name, None).await {
            Ok(n) => n,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(TargetError::api(format!("inspecting network {name}"), e)),
        };
        Self::check_ours("network", name, existing.labels.as_ref())?;
        // The daemon may take a moment to release the endpoints of containers just
        // removed; a few retries cover that.
        let mut attempt = 0;
        loop {
            match self.docker.remove_network(name).await {
                Ok(()) => return Ok(()),
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) if attempt < 3 => {
                    tracing::debug!(network = name, error = %e, "removing network; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(TargetError::api(format!("removing network {name}"), e)),
            }
        }
    }

    async fn remove_volume(&self, name: &str) -> Result<(), TargetError> {
        let existing = match self.docker.inspect_volume(name).await {
            Ok(v) => v,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(TargetError::api(format!("inspecting volume {name}"), e)),
        };
        Self::check_ours("volume", name, Some(&existing.labels))?;
        let options = RemoveVolumeOptionsBuilder::new().force(false).build();
        match self.docker.remove_volume(name, Some(options)).await {
            Err(e) if !is_not_found(&e) => {
                Err(TargetError::api(format!("removing volume {name}"), e))
            }
            _ => Ok(()),
        }
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<(), TargetError> {
        if image.contains('@') {
            match self.docker.inspect_image(image).await {
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(TargetError::api(format!("inspecting image {image}"), e)),
            }
        }
        let (repository, tag) = split_reference(image);
        let options = CreateImageOptionsBuilder::new()
            .from_image(repository)
            .tag(tag)
            .build();
        let credentials = auth.map(|a| DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: a.server.clone(),
            ..Default::default()
        });
        let mut progress = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = progress.next().await {
            if let Err(e) = item {
                return Err(TargetError::Pull {
                    image: image.to_owned(),
                    reason: e.to_string(),
                });
            }
        }
        tracing::info!(image, "pulled image");
        Ok(())
    }

    async fn resolve_digest(&self, image: &str) -> Result<Option<String>, TargetError> {
        let inspected = match self.docker.inspect_image(image).await {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => {
                return Err(TargetError::NotFound {
                    kind: "image",
                    name: image.to_owned(),
                });
            }
            Err(e) => return Err(TargetError::api(format!("inspecting image {image}"), e)),
        };
        let (repository, _) = split_reference(image);
        let digests = inspected.repo_digests.unwrap_or_default();
        Ok(digests
            .iter()
            .find(|d| d.split_once('@').is_some_and(|(r, _)| r == repository))
            .cloned())
    }
}

/// An existing network or volume: Slipway's for this env and stack, someone else's
/// (used, never removed), or Slipway's for another (refused).
fn ensured_existing<S: std::hash::BuildHasher>(
    kind: &'static str,
    name: &str,
    labels: Option<&HashMap<String, String, S>>,
    owner: &Owner,
) -> Result<Ensured, TargetError> {
    match labels.and_then(Owner::from_labels) {
        None => Ok(Ensured {
            created: false,
            managed: false,
        }),
        Some(o) if o.env == owner.env && o.stack == owner.stack => Ok(Ensured {
            created: false,
            managed: true,
        }),
        Some(o) => Err(TargetError::Taken {
            kind,
            name: name.to_owned(),
            env: o.env,
            stack: o.stack,
        }),
    }
}

/// `Option<Duration>` as humantime text (`10s`, `1m 30s`).
pub(crate) mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| super::duration::parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `Duration` as humantime text; a bare number is seconds.
pub(crate) mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        if let Ok(secs) = t.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
        humantime::parse_duration(t)
            .map_err(|e| format!("duration `{t}`: {e} (write e.g. `10s`, `500ms`)"))
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_need_every_label() {
        let owner = Owner {
            env: "prod".into(),
            stack: "shop".into(),
            service: "web".into(),
            revision: "3".into(),
            replica: Some(1),
        };
        let labels: HashMap<String, String> = owner.labels().into_iter().collect();
        assert!(Selector::service("prod", "shop", "web").matches(&labels));
        assert!(!Selector::service("prod", "shop", "api").matches(&labels));
        assert!(
            !Selector::service("prod", "shop", "web")
                .revision("2")
                .matches(&labels)
        );
        let mut partial = labels.clone();
        partial.remove(LABEL_REVISION);
        assert!(!Selector::env("prod").matches(&partial));
    }

    #[test]
    fn owner_labels_win_over_the_specs() {
        let owner = Owner {
            env: "prod".into(),
            stack: "shop".into(),
            service: "web".into(),
            revision: "3".into(),
            replica: Some(2),
        };
        let spec = ContainerSpec {
            image: "x".into(),
            labels: BTreeMap::from([
                (LABEL_ENV.to_owned(), "other".to_owned()),
                ("io.slipway.extra".to_owned(), "no".to_owned()),
                ("team".to_owned(), "a".to_owned()),
            ]),
            ..ContainerSpec::default()
        };
        let body = DockerTarget::create_body(&owner, &spec);
        let labels = body.labels.unwrap_or_default();
        assert_eq!(labels.get(LABEL_ENV).map(String::as_str), Some("prod"));
        assert_eq!(labels.get(LABEL_REPLICA).map(String::as_str), Some("2"));
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert!(!labels.contains_key("io.slipway.extra"));
    }

    #[test]
    fn references_split_like_the_pull_api() {
        assert_eq!(split_reference("a/b:1"), ("a/b", "1"));
        assert_eq!(split_reference("host:5000/b"), ("host:5000/b", "latest"));
        assert_eq!(split_reference("b@sha256:00"), ("b", "sha256:00"));
    }
}
