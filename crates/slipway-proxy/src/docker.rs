//! The Docker provider: the routes of the local engine's running containers, followed live
//! through its events API and given to the proxy as the `docker` provider's route set.
//!
//! [`DockerProvider::spawn`] starts one task that connects to the engine's unix socket
//! ([`DockerOptions`]), subscribes to container and network events, lists and inspects the
//! running containers (a full sync), and from then on applies each event: `start`,
//! `unpause`, `rename`, `update`, `health_status` and a network's `connect`/`disconnect`
//! inspect the container again; `stop`, `pause` and a `kill` with a signal that ends a
//! process (anything but `HUP`, `USR1`, `USR2`, `WINCH`) take its routes away at once, so
//! its backends drain while it is still running; `die` and `destroy` forget it. Each
//! container is a [`Workload`] (name, labels, environment, exposed and published ports,
//! its IP on each network, best first) read by [`labels::read`]; Docker's `HEALTHCHECK`
//! status goes to [`Proxy::set_engine_health`] (`starting` and `unhealthy` get no traffic).
//!
//! When the engine goes away (restart, socket closed) the task keeps the last routes,
//! reconnects with a doubling backoff, and syncs in full again. Stopping the provider
//! (its [`CancellationToken`]) removes its routes.
//!
//! Invariants: a container being stopped gets no new request from the moment its `kill` or
//! `stop` event is read (not its `die`); a health verdict is given before the routes that
//! use it; the diagnostics kept ([`DockerProvider::diagnostics`]) are those of the last
//! change, and each one is logged once, when it first appears.
//!
//! Swarm services: when the engine is an active swarm manager, the provider also lists the
//! services (their `Spec.Labels`, where a stack's `deploy.labels` land) and their tasks,
//! follows `service` events (`create`, `update`, `remove`) next to the container events,
//! and reads them again on a task container's `start`/`die` and every
//! [`DockerOptions::swarm_refresh`] (tasks on other nodes have no event here; that tick
//! also notices the engine joining or leaving a swarm). Each service is a [`Workload`] of
//! kind service (routes read "labels of service NAME"), reached at its running tasks'
//! IPs on a network the proxy shares, one backend per task, else at its published ports
//! (see the `swarm` module). A task's container yields no route of its own on a manager
//! (its label `com.docker.swarm.service.id` says whose it is): its service's labels win,
//! and one route is not made twice. A backend a service cannot be reached at (a port
//! neither published nor on a shared network) is left out with a warning, never sent to
//! the service's name, which only resolves inside its networks.
//!
//! Choices: the proxy runs on the engine's host, which reaches every bridge network, so a
//! container is reached at its IP on the networks named in [`DockerOptions::networks`]
//! first, then the one its `traefik.docker.network` label names, then the others by name;
//! `network_mode: host` is 127.0.0.1; with [`Reach::PublishedPorts`] (rootless Docker,
//! Docker Desktop) or on no network, its published port on 127.0.0.1. The host does not
//! reach overlay networks, so a swarm service is reached at its tasks only on a network
//! the proxy is on: one named in [`DockerOptions::networks`], or one its own container
//! (when it runs in one) is attached to.

mod swarm;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{
    ContainerInspectResponse, EventMessage, EventMessageTypeEnum, HealthStatusEnum,
};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::balance::Health;
use crate::diagnostic::Diagnostic;
use crate::forward::Proxy;
use crate::labels::{self, Middlewares, PublishedPort, Workload, WorkloadKind};
use crate::route::{Address, RouteSet};

/// The provider's name in [`Proxy::set_provider`] and [`Proxy::set_engine_health`].
pub const PROVIDER: &str = "docker";

/// How containers are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reach {
    /// At their IP on their networks (the proxy runs on the engine's host).
    #[default]
    Networks,
    /// At their published ports on 127.0.0.1 (rootless Docker, Docker Desktop).
    PublishedPorts,
}

#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// The engine's unix socket.
    pub socket: PathBuf,
    /// Networks to reach containers on first, best first (Traefik's
    /// `providers.docker.network`).
    pub networks: Vec<String>,
    pub reach: Reach,
    /// The first wait before reconnecting to an engine that went away; doubled on each
    /// failure in a row up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often swarm services and their tasks are read again without an event (tasks on
    /// other nodes change without one here), and whether the engine is a manager checked.
    pub swarm_refresh: Duration,
}

impl Default for DockerOptions {
    /// The local engine: `DOCKER_HOST` when it names a unix socket, else
    /// `/var/run/docker.sock`.
    fn default() -> Self {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        DockerOptions {
            socket,
            networks: Vec::new(),
            reach: Reach::Networks,
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(10),
            // Traefik's `swarmModeRefreshSeconds`.
            swarm_refresh: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine at {socket}: {source}")]
    Connect {
        socket: String,
        source: bollard::errors::Error,
    },
    #[error("Docker engine at {socket}: {what}: {source}")]
    Api {
        socket: String,
        what: String,
        source: bollard::errors::Error,
    },
    #[error("Docker engine at {socket} closed its events stream")]
    EventsEnded { socket: String },
}

/// What the provider has seen, shared with its handle.
#[derive(Debug, Default)]
struct Shared {
    diagnostics: Mutex<Vec<Diagnostic>>,
    workloads: Mutex<Vec<Workload>>,
    last_error: Mutex<Option<String>>,
}

/// The running provider's handle.
#[derive(Debug)]
pub struct DockerProvider {
    shared: Arc<Shared>,
    syncs: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl DockerProvider {
    /// Starts following the engine; routes go to `proxy` until `stop` is cancelled. Never
    /// fails: an engine that cannot be reached is retried with backoff (see
    /// [`DockerProvider::last_error`]).
    pub fn spawn(proxy: Arc<Proxy>, options: DockerOptions, stop: CancellationToken) -> Self {
        let shared = Arc::new(Shared::default());
        let (syncs_tx, syncs) = watch::channel(0);
        let task = tokio::spawn(run(proxy, options, shared.clone(), syncs_tx, stop));
        DockerProvider {
            shared,
            syncs,
            task,
        }
    }

    /// Waits until the first full list of containers is applied.
    pub async fn first_sync(&self) {
        let mut rx = self.syncs.clone();
        // An error means the task ended (stopped): nothing more will come.
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// Full syncs done so far (one per connection to the engine).
    pub fn syncs(&self) -> u64 {
        *self.syncs.borrow()
    }

    /// Waits until more than `n` full syncs are done (the one after a reconnection).
    pub async fn sync_after(&self, n: u64) {
        let mut rx = self.syncs.clone();
        let _ = rx.wait_for(|s| *s > n).await;
    }

    /// The label readers' problems with the running containers and swarm services, as of
    /// the last change.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        lock(&self.shared.diagnostics).clone()
    }

    /// The containers and swarm services routed from, as the label readers saw them.
    pub fn workloads(&self) -> Vec<Workload> {
        lock(&self.shared.workloads).clone()
    }

    /// Why the engine could not be reached, while it cannot.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// Waits for the task to end (after its token is cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run(
    proxy: Arc<Proxy>,
    options: DockerOptions,
    shared: Arc<Shared>,
    syncs: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut backoff = options.reconnect_min;
    let mut follower = Follower {
        proxy: proxy.clone(),
        options: options.clone(),
        shared: shared.clone(),
        containers: BTreeMap::new(),
        swarm: None,
        services: BTreeMap::new(),
        applied: None,
    };
    loop {
        match follower.session(&syncs, &stop, &mut backoff).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(
                    "{e}; the last routes keep serving, reconnecting in {}",
                    humantime::format_duration(backoff)
                );
                *lock(&shared.last_error) = Some(e.to_string());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => break,
        }
        backoff = (backoff * 2).min(options.reconnect_max);
    }
    proxy.set_provider(PROVIDER, RouteSet::default());
    proxy.set_engine_health(PROVIDER, HashMap::new());
}

/// A running container as the provider keeps it.
#[derive(Debug, Clone)]
struct Container {
    workload: Workload,
    health: Health,
    /// A `kill`/`stop`/`pause` came: routed no more until it starts or unpauses again.
    stopping: bool,
}

struct Follower {
    proxy: Arc<Proxy>,
    options: DockerOptions,
    shared: Arc<Shared>,
    /// By container id (task containers too: they judge their tasks on this node).
    containers: BTreeMap<String, Container>,
    /// `Some` while the engine is an active swarm manager.
    swarm: Option<swarm::Swarm>,
    /// Swarm services by id.
    services: BTreeMap<String, swarm::Service>,
    /// What was last given to the proxy.
    applied: Option<(RouteSet, HashMap<Address, Health>)>,
}

impl Follower {
    fn socket(&self) -> String {
        self.options.socket.display().to_string()
    }

    fn api(&self, what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let (socket, what) = (self.socket(), what.into());
        move |source| DockerError::Api {
            socket,
            what,
            source,
        }
    }

    fn swarm_api(&self, e: swarm::ApiError) -> DockerError {
        DockerError::Api {
            socket: self.socket(),
            what: e.what,
            source: e.source,
        }
    }

    /// One connection: a full sync, then events until the stream fails (`Err`) or `stop`.
    async fn session(
        &mut self,
        syncs: &watch::Sender<u64>,
        stop: &CancellationToken,
        backoff: &mut Duration,
    ) -> Result<(), DockerError> {
        let socket = self.socket();
        let connect = |source| DockerError::Connect {
            socket: socket.clone(),
            source,
        };
        let docker = Docker::connect_with_socket(&socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(connect)?
            .negotiate_version()
            .await
            .map_err(connect)?;
        // Events from this second on, replayed if they come before the list: applying one
        // twice, in order, ends where applying it once does.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let filters = HashMap::from([("type", vec!["container", "network", "service"])]);
        let mut events = docker.events(Some(
            EventsOptionsBuilder::new()
                .since(&since)
                .filters(&filters)
                .build(),
        ));
        let running = docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(false).build()))
            .await
            .map_err(self.api("listing containers"))?;
        let mut containers = BTreeMap::new();
        for summary in running {
            let Some(id) = summary.id else { continue };
            if let Some(c) = self.inspect(&docker, &id).await? {
                containers.insert(id, c);
            }
        }
        self.containers = containers;
        self.sync_swarm(&docker).await?;
        self.apply();
        *lock(&self.shared.last_error) = None;
        syncs.send_modify(|n| *n += 1);
        *backoff = self.options.reconnect_min;
        tracing::info!(
            socket = %self.socket(),
            containers = self.containers.len(),
            swarm_services = self.swarm.as_ref().map(|_| self.services.len()),
            "following the Docker engine's containers"
        );
        let mut refresh = tokio::time::interval(self.options.swarm_refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.reset();
        loop {
            let event = tokio::select! {
                e = events.next() => e,
                _ = refresh.tick() => {
                    self.sync_swarm(&docker).await?;
                    self.apply();
                    continue;
                }
                () = stop.cancelled() => return Ok(()),
            };
            match event {
                Some(Ok(event)) => {
                    if self.handle(&docker, event).await? {
                        self.apply();
                    }
                }
                Some(Err(e)) => return Err(self.api("reading events")(e)),
                None => {
                    return Err(DockerError::EventsEnded {
                        socket: self.socket(),
                    });
                }
            }
        }
    }

    /// The container `id` if it runs; `None` if it is gone or not running.
    async fn inspect(&self, docker: &Docker, id: &str) -> Result<Option<Container>, DockerError> {
        match docker.inspect_container(id, None).await {
            Ok(c) => Ok(container(&c, &self.options)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.api(format!("inspecting container {id}"))(e)),
        }
    }

    /// Whether the engine is a swarm manager, and if so every service, read again.
    async fn sync_swarm(&mut self, docker: &Docker) -> Result<(), DockerError> {
        let found = swarm::swarm(docker, &self.options)
            .await
            .map_err(|e| self.swarm_api(e))?;
        if found.is_some() != self.swarm.is_some() {
            tracing::info!(
                socket = %self.socket(),
                manager = found.is_some(),
                "the Docker engine's swarm mode changed: {}",
                if found.is_some() { "following its services" } else { "no services to follow" }
            );
        }
        self.services = match &found {
            Some(s) => swarm::services(docker, s, &self.options)
                .await
                .map_err(|e| self.swarm_api(e))?
                .into_iter()
                .collect(),
            None => BTreeMap::new(),
        };
        self.swarm = found;
        Ok(())
    }

    /// Reads the service `id` again; whether anything changed.
    async fn refresh_service(&mut self, docker: &Docker, id: &str) -> Result<bool, DockerError> {
        let Some(s) = &self.swarm else {
            return Ok(false);
        };
        let fresh = swarm::service(docker, s, &self.options, id)
            .await
            .map_err(|e| self.swarm_api(e))?;
        Ok(match fresh {
            Some(fresh) => self.services.insert(id.to_owned(), fresh.clone()) != Some(fresh),
            None => self.services.remove(id).is_some(),
        })
    }

    /// Applies one `service` event; whether anything changed.
    async fn handle_service(
        &mut self,
        docker: &Docker,
        id: &str,
        action: &str,
    ) -> Result<bool, DockerError> {
        if self.swarm.is_none() {
            // A service event from an engine not known as a manager: it has become one.
            self.sync_swarm(docker).await?;
            return Ok(true);
        }
        match action {
            "remove" => Ok(self.services.remove(id).is_some()),
            _ => self.refresh_service(docker, id).await,
        }
    }

    /// Applies one event; whether anything changed.
    async fn handle(&mut self, docker: &Docker, event: EventMessage) -> Result<bool, DockerError> {
        let actor = event.actor.unwrap_or_default();
        let attributes = actor.attributes.unwrap_or_default();
        let action = event.action.unwrap_or_default();
        if event.typ == Some(EventMessageTypeEnum::SERVICE) {
            let id = actor.id.unwrap_or_default();
            if id.is_empty() {
                return Ok(false);
            }
            return self.handle_service(docker, &id, &action).await;
        }
        let id = match event.typ {
            Some(EventMessageTypeEnum::CONTAINER) => actor.id.unwrap_or_default(),
            Some(EventMessageTypeEnum::NETWORK)
                if matches!(action.as_str(), "connect" | "disconnect") =>
            {
                attributes.get("container").cloned().unwrap_or_default()
            }
            _ => return Ok(false),
        };
        if id.is_empty() {
            return Ok(false);
        }
        // `health_status: healthy`, `exec_start: sh -c …`: the word before `:` is the action.
        let verb = action.split(':').next().unwrap_or("").trim();
        let name = attributes.get("name").map_or(id.as_str(), String::as_str);
        // A task's container started or ended here: its service has a task more or less.
        let task_of = (event.typ == Some(EventMessageTypeEnum::CONTAINER)
            && matches!(verb, "start" | "die" | "destroy"))
        .then(|| attributes.get(swarm::SERVICE_ID_LABEL).cloned())
        .flatten();
        let changed = match verb {
            "start" | "unpause" | "restart" => self.refresh(docker, &id, true).await,
            "rename" | "update" | "health_status" | "connect" | "disconnect" => {
                self.refresh(docker, &id, false).await
            }
            "kill" if !ends_process(attributes.get("signal").map(String::as_str)) => Ok(false),
            "kill" | "stop" | "pause" => Ok(match self.containers.get_mut(&id) {
                Some(c) if !c.stopping => {
                    tracing::info!(
                        container = name,
                        event = verb,
                        "draining the container's backends"
                    );
                    c.stopping = true;
                    true
                }
                _ => false,
            }),
            "die" | "destroy" => Ok(self.containers.remove(&id).is_some()),
            _ => Ok(false),
        }?;
        match task_of {
            Some(service) => Ok(self.refresh_service(docker, &service).await? || changed),
            None => Ok(changed),
        }
    }

    /// Inspects `id` again; `started` says it (re)started, which ends a stop seen before.
    async fn refresh(
        &mut self,
        docker: &Docker,
        id: &str,
        started: bool,
    ) -> Result<bool, DockerError> {
        let Some(mut fresh) = self.inspect(docker, id).await? else {
            return Ok(self.containers.remove(id).is_some());
        };
        if let Some(known) = self.containers.get(id) {
            // A health or network change during a stop does not route it again.
            fresh.stopping |= known.stopping && !started;
        }
        self.containers.insert(id.to_owned(), fresh);
        Ok(true)
    }

    /// A service as the label readers see it now: its tasks on this node by their
    /// containers, and the engine's verdict on each task's IP.
    fn service_workload(&self, s: &swarm::Service) -> (Workload, HashMap<String, Health>) {
        let running = |id: &str| self.containers.get(id).filter(|c| !c.stopping);
        let mut w = s.workload.clone();
        let mut health = HashMap::new();
        w.task_addresses = s.tasks.as_ref().map(|tasks| {
            tasks
                .iter()
                .filter(|t| match &t.local_container {
                    Some(id) => match running(id) {
                        Some(c) => {
                            if c.health != Health::Healthy {
                                health.insert(t.ip.clone(), c.health);
                            }
                            true
                        }
                        None => false,
                    },
                    None => true,
                })
                .map(|t| t.ip.clone())
                .collect()
        });
        if s.local_containers.iter().any(|id| running(id).is_some()) {
            w.published_ports.extend(s.host_ports.iter().cloned());
        }
        (w, health)
    }

    /// Reads every routed container's and service's labels and gives the proxy the result.
    fn apply(&mut self) {
        // On a manager a task's container is its service's: the service's labels route it.
        let manager = self.swarm.is_some();
        let mut routed: Vec<&Container> = self
            .containers
            .values()
            .filter(|c| !c.stopping)
            .filter(|c| !(manager && c.workload.labels.contains_key(swarm::SERVICE_ID_LABEL)))
            .collect();
        routed.sort_by(|a, b| a.workload.name.cmp(&b.workload.name));
        let mut services: Vec<(Workload, HashMap<String, Health>)> = self
            .services
            .values()
            .map(|s| self.service_workload(s))
            .collect();
        services.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let workloads: Vec<Workload> = routed
            .iter()
            .map(|c| c.workload.clone())
            .chain(services.iter().map(|(w, _)| w.clone()))
            .collect();
        let middlewares = Middlewares::collect(&workloads);
        let mut routes = Vec::new();
        let mut diagnostics = Vec::new();
        let mut health = HashMap::new();
        for c in &routed {
            let (mut r, mut d) = labels::read(&c.workload, &middlewares);
            if c.health != Health::Healthy {
                for b in r.iter().flat_map(|r| r.backends()) {
                    health.insert(b.address.clone(), c.health);
                }
            }
            routes.append(&mut r);
            diagnostics.append(&mut d);
        }
        for (w, verdicts) in &services {
            let (mut r, mut d) = labels::read(w, &middlewares);
            diagnostics.extend(unreachable_backends(w, &mut r));
            for b in r.iter().flat_map(|r| r.backends()) {
                let ip = b.address.as_str().parse::<SocketAddr>().map(|a| a.ip());
                if let Some(h) = ip.ok().and_then(|ip| verdicts.get(&ip.to_string())) {
                    health.insert(b.address.clone(), *h);
                }
            }
            routes.append(&mut r);
            diagnostics.append(&mut d);
        }
        {
            let mut kept = lock(&self.shared.diagnostics);
            for d in diagnostics.iter().filter(|d| !kept.contains(d)) {
                tracing::warn!("docker labels: {d}");
            }
            *kept = diagnostics;
        }
        *lock(&self.shared.workloads) = workloads;
        let routes = RouteSet { routes };
        let next = (routes, health);
        if self.applied.as_ref() == Some(&next) {
            return;
        }
        let (routes, health) = next.clone();
        // The verdict first, so a new backend is never served before its health is known.
        self.proxy.set_engine_health(PROVIDER, health);
        self.proxy.set_provider(PROVIDER, routes);
        self.applied = Some(next);
    }
}

/// Takes out of a service's routes the backends the proxy cannot reach: the label readers'
/// last resort, `NAME:PORT`, resolves only inside the service's networks. One warning a
/// port says so; the route stays (answering 503), so its key is not taken by another.
fn unreachable_backends(w: &Workload, routes: &mut [crate::route::Route]) -> Vec<Diagnostic> {
    let mut ports = std::collections::BTreeSet::new();
    for r in routes.iter_mut() {
        for set in &mut r.backend_sets {
            set.backends.retain(|b| {
                let ip = b.address.as_str().parse::<SocketAddr>();
                if ip.is_err() {
                    let port = b
                        .address
                        .as_str()
                        .rsplit(':')
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    ports.insert(port);
                }
                ip.is_ok()
            });
        }
    }
    ports
        .into_iter()
        .map(|port| {
            Diagnostic::warning(format!(
                "port {port} is published nowhere the proxy reaches (an `ingress` port, or a `host` port while a task runs on this node) and is on no network the proxy shares: its routes have no backend"
            ))
            .origin(format!("service {}", w.name))
            .hint(format!(
                "publish it (`ports: [\"{port}\"]` in the stack, or `--publish`), or attach the proxy to one of the service's networks and name it with `--docker-network`"
            ))
        })
        .collect()
}

/// Whether a `kill` event's signal ends the process (as `docker stop` and `docker kill`
/// send), rather than asking it to reload or rotate its logs.
fn ends_process(signal: Option<&str>) -> bool {
    let s = signal.unwrap_or("").trim().to_ascii_uppercase();
    let s = s.strip_prefix("SIG").unwrap_or(&s);
    !matches!(
        s,
        "HUP" | "1" | "USR1" | "10" | "USR2" | "12" | "WINCH" | "28"
    )
}

/// A running container's description; `None` when it does not run.
fn container(c: &ContainerInspectResponse, options: &DockerOptions) -> Option<Container> {
    let state = c.state.as_ref();
    if !state.and_then(|s| s.running).unwrap_or(false) {
        return None;
    }
    let paused = state.and_then(|s| s.paused).unwrap_or(false);
    let health = match state.and_then(|s| s.health.as_ref()).and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => Health::Starting,
        Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
        _ => Health::Healthy,
    };
    Some(Container {
        workload: workload(c, options),
        health,
        stopping: paused,
    })
}

/// What the label readers need of a container.
fn workload(c: &ContainerInspectResponse, options: &DockerOptions) -> Workload {
    let config = c.config.as_ref();
    let name = c
        .name
        .as_deref()
        .map(|n| n.trim_start_matches('/'))
        .filter(|n| !n.is_empty())
        .or(c.id.as_deref())
        .unwrap_or("unnamed")
        .to_owned();
    let labels: BTreeMap<String, String> = config
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let environment = environment(config.and_then(|c| c.env.as_deref()));
    let exposed_ports = config
        .and_then(|c| c.exposed_ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| tcp_port(p))
        .collect();
    let settings = c.network_settings.as_ref();
    let mut published_ports: Vec<PublishedPort> = settings
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(port, bindings)| Some((tcp_port(port)?, bindings.as_ref()?)))
        .flat_map(|(target, bindings)| {
            bindings.iter().filter_map(move |b| {
                Some(PublishedPort {
                    target,
                    published: b.host_port.as_deref()?.parse().ok()?,
                    host_ip: b.host_ip.clone().filter(|ip| !ip.is_empty()),
                })
            })
        })
        .collect();
    // IPv4 bindings before IPv6 ones, so 127.0.0.1 is what a wildcard binding becomes.
    published_ports.sort_by_key(|p| {
        (
            p.target,
            p.host_ip.as_deref().is_some_and(|ip| ip.contains(':')),
        )
    });
    let host_mode = c
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
        == Some("host");
    let addresses = match options.reach {
        Reach::PublishedPorts => Vec::new(),
        Reach::Networks if host_mode => vec!["127.0.0.1".to_owned()],
        Reach::Networks => {
            let label_network = labels.get("traefik.docker.network").cloned();
            let mut networks: Vec<(usize, String, String)> = settings
                .and_then(|s| s.networks.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|(net, endpoint)| {
                    let ip = endpoint.ip_address.clone().filter(|ip| !ip.is_empty())?;
                    let rank = options
                        .networks
                        .iter()
                        .position(|n| n == net)
                        .or_else(|| {
                            (label_network.as_ref() == Some(net)).then_some(options.networks.len())
                        })
                        .unwrap_or(usize::MAX);
                    Some((rank, net.clone(), ip))
                })
                .collect();
            networks.sort();
            networks.into_iter().map(|(_, _, ip)| ip).collect()
        }
    };
    Workload {
        name,
        kind: WorkloadKind::Container,
        labels,
        environment,
        exposed_ports,
        published_ports,
        addresses,
        task_addresses: None,
    }
}

/// `80/tcp` (or `80`) is 80; a UDP or SCTP port is none.
/// A container's `KEY=VALUE` environment as a map (a bare `KEY` is unset, not empty).
fn environment(env: Option<&[String]>) -> BTreeMap<String, String> {
    env.into_iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn tcp_port(spec: &str) -> Option<u16> {
    let (port, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    (proto == "tcp").then(|| port.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspected(json: &str) -> ContainerInspectResponse {
        serde_json::from_str(json).expect("inspect JSON")
    }

    const RUNNING: &str = r#"{
        "Id": "3f2a", "Name": "/shop-web-1",
        "State": {"Running": true, "Paused": false, "Health": {"Status": "starting"}},
        "Config": {
            "Labels": {"traefik.enable": "true", "traefik.docker.network": "front"},
            "Env": ["VIRTUAL_HOST=shop.test", "PATH=/bin", "EMPTY="],
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}}
        },
        "HostConfig": {"NetworkMode": "shop_default"},
        "NetworkSettings": {
            "Ports": {"80/tcp": [{"HostIp": "::", "HostPort": "8081"}, {"HostIp": "0.0.0.0", "HostPort": "8080"}], "53/udp": null},
            "Networks": {
                "back": {"IPAddress": "172.20.0.5"},
                "front": {"IPAddress": "172.21.0.5"},
                "admin": {"IPAddress": "172.22.0.5"},
                "none": {"IPAddress": ""}
            }
        }
    }"#;

    #[test]
    fn a_container_becomes_a_workload_with_its_best_network_first() {
        let options = DockerOptions {
            networks: vec!["admin".to_owned()],
            ..DockerOptions::default()
        };
        let c = container(&inspected(RUNNING), &options).expect("running");
        let w = &c.workload;
        assert_eq!(w.name, "shop-web-1");
        assert_eq!(c.health, Health::Starting);
        assert!(!c.stopping);
        assert_eq!(
            w.environment.get("VIRTUAL_HOST").map(String::as_str),
            Some("shop.test")
        );
        assert_eq!(w.environment.get("EMPTY").map(String::as_str), Some(""));
        assert_eq!(w.exposed_ports, vec![80]);
        // The configured network, then the label's, then the rest by name.
        assert_eq!(w.addresses, vec!["172.22.0.5", "172.21.0.5", "172.20.0.5"]);
        assert_eq!(w.published_ports[0].published, 8080);
        assert_eq!(w.published_ports.len(), 2);
    }

    #[test]
    fn published_ports_reach_a_container_when_asked_and_host_mode_is_loopback() {
        let options = DockerOptions {
            reach: Reach::PublishedPorts,
            ..DockerOptions::default()
        };
        let c = container(&inspected(RUNNING), &options).expect("running");
        assert!(c.workload.addresses.is_empty());
        let (routes, _) = labels::read_all(std::slice::from_ref(&c.workload));
        let backend = routes.routes[0].backends().next().expect("a backend");
        assert_eq!(backend.address.as_str(), "127.0.0.1:8080");

        let host = RUNNING.replace("shop_default", "host");
        let c = container(&inspected(&host), &DockerOptions::default()).expect("running");
        assert_eq!(c.workload.addresses, vec!["127.0.0.1"]);
    }

    #[test]
    fn stopped_and_paused_containers_are_not_routed() {
        let stopped = RUNNING.replace(r#""Running": true"#, r#""Running": false"#);
        assert!(container(&inspected(&stopped), &DockerOptions::default()).is_none());
        let paused = RUNNING.replace(r#""Paused": false"#, r#""Paused": true"#);
        let c = container(&inspected(&paused), &DockerOptions::default()).expect("running");
        assert!(c.stopping);
    }

    #[test]
    fn a_service_port_that_cannot_be_reached_has_no_backend_and_a_warning() {
        let w = Workload {
            name: "shop_web".into(),
            kind: WorkloadKind::Service,
            labels: BTreeMap::from([("slipway.proxy.host".into(), "shop.test".into())]),
            exposed_ports: vec![8080],
            published_ports: vec![PublishedPort {
                target: 9000,
                published: 39000,
                host_ip: None,
            }],
            ..Workload::default()
        };
        let (mut routes, _) = labels::read(&w, &Middlewares::collect(std::slice::from_ref(&w)));
        assert_eq!(
            routes[0].backends().next().map(|b| b.address.to_string()),
            Some("shop_web:8080".to_owned()),
            "the readers' last resort"
        );
        let d = unreachable_backends(&w, &mut routes);
        assert_eq!(routes.len(), 1, "the route stays");
        assert!(routes[0].backends().next().is_none());
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].origin.as_deref(), Some("service shop_web"));
        assert!(d[0].message.contains("port 8080"), "{}", d[0]);
    }

    #[test]
    fn only_signals_that_end_a_process_drain_it() {
        for s in [
            None,
            Some("15"),
            Some("9"),
            Some("SIGTERM"),
            Some("KILL"),
            Some("3"),
        ] {
            assert!(ends_process(s), "{s:?}");
        }
        for s in [Some("1"), Some("SIGHUP"), Some("USR1"), Some("28")] {
            assert!(!ends_process(s), "{s:?}");
        }
    }
}
