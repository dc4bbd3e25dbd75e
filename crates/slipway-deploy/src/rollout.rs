//! A deploy of one service as health-gated target swaps with drain (kamal-proxy style),
//! driving the edge proxy's backends directly ([`Proxy::set_provider`] with the provider
//! `deploy:ENV/STACK`, see [`provider_name`]), never through labels.
//!
//! Input: a [`ServiceSpec`] (plain and serde-serialisable: what a plan maps to). Output:
//! an [`Outcome`] (done, rolled back, paused), and every step on the way as a
//! [`RolloutEvent`] given to the rollout's callback ([`Rollout::on_event`]) and logged.
//!
//! Strategies ([`Strategy`]):
//! - rolling (the default): batches of `parallelism`. Start-first: start the batch's new
//!   containers → health gate → add them to the route → take as many old ones off it →
//!   wait for their in-flight requests (bounded by `drain_timeout`) → stop them; then
//!   `delay` and the next batch. Stop-first takes the old ones off and stops them before
//!   the batch starts. Old containers are stopped, not removed, until the rollout is
//!   over: a rollback starts them again, gates them (running, listening on the port, not
//!   unhealthy to the engine: their own probe may not be the new one's), routes them, then
//!   drains and removes every new container.
//! - blue-green: the whole new set up and healthy, then one atomic switch of the route's
//!   backends; the old set drains and stays (stopped from traffic) for `keep_old`, then
//!   it is stopped and removed.
//! - canary: the whole new set up and healthy, then two backend sets on the route (the
//!   old one and the new revision's) whose weights step through `steps` (each held for
//!   its `pause`, the new containers watched meanwhile); promote is 100, after which the
//!   old set drains and is removed; an abort puts all traffic back on the old set and
//!   removes the new one.
//!
//! The health gate ([`HealthGate`]): a container is healthy when it runs, has an IP on
//! the service's network, the engine says `healthy` (when it has a healthcheck and
//! `docker` is on), and the probe (HTTP or TCP; TCP on the service port when nothing
//! else checks it) passed `successes` times in a row, all within `timeout`.
//!
//! Invariants:
//! - A container gets traffic only after it passed its gate; one that never does gets
//!   none, and is stopped and removed.
//! - A container leaves the route before it is stopped, and is stopped only once its
//!   in-flight requests ended (or `drain_timeout` passed), so a deploy under load fails
//!   no request.
//! - The route never goes without a serving backend while the old or the new set has
//!   one: new backends are added before old ones are taken off (start-first, blue-green,
//!   canary).
//! - Only containers labelled for this service (see [`crate::target`]) are touched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slipway_proxy::balance::LiveBackend;
use slipway_proxy::{
    Address, Backend, BackendSet, BackendState, Host, Proxy, Route, RouteKey, RouteSource, Tls,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::target::{
    ContainerInfo, ContainerSpec, EngineHealth, NetworkAttachment, Owner, RegistryAuth, RunState,
    Selector, Target, TargetError, duration,
};

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// One service to deploy at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub env: String,
    pub stack: String,
    /// The service's name within its stack.
    pub name: String,
    /// The revision being deployed (a number as text, or any short id).
    pub revision: String,
    /// The image, best pinned by digest.
    pub image: String,
    #[serde(default = "one")]
    pub replicas: u32,
    /// Every container's spec; `name` and `image` are set by the rollout, and the
    /// service's `network` is added to `networks` when missing.
    #[serde(default)]
    pub template: ContainerSpec,
    /// The container port traffic goes to.
    pub port: u16,
    /// The network the proxy reaches the containers on (their IP there, `port`).
    pub network: String,
    /// Where the proxy routes requests from; `None` for a service without one.
    #[serde(default)]
    pub route: Option<RouteSpec>,
    #[serde(default)]
    pub health: HealthGate,
    #[serde(default)]
    pub update: UpdateConfig,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub pull: PullPolicy,
}

/// The requests a service takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub host: String,
    #[serde(default)]
    pub path: Option<String>,
    /// `acme`, `off` (the default) or an uploaded certificate's name.
    #[serde(default)]
    pub tls: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Probe {
    /// `GET path` on the service port; passes on `status`, or any 2xx/3xx.
    Http {
        path: String,
        #[serde(default)]
        status: Option<u16>,
    },
    /// A TCP connection to the service port opens.
    Tcp,
}

/// When a new container is healthy enough for traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthGate {
    /// Wait for the engine's `healthy` when the container has a healthcheck.
    #[serde(default = "yes")]
    pub docker: bool,
    /// A probe from here; a TCP one when `None` and the engine checks nothing.
    #[serde(default)]
    pub probe: Option<Probe>,
    /// Consecutive probe passes needed.
    #[serde(default = "one")]
    pub successes: u32,
    /// Time between probes.
    #[serde(default = "HealthGate::default_interval", with = "duration")]
    pub interval: Duration,
    /// Time one probe may take.
    #[serde(default = "HealthGate::default_probe_timeout", with = "duration")]
    pub probe_timeout: Duration,
    /// Time a container has to become healthy.
    #[serde(default = "HealthGate::default_timeout", with = "duration")]
    pub timeout: Duration,
}

impl HealthGate {
    // The gate notices Docker's verdict (or a probe's) this soon: each batch waits for it.
    fn default_interval() -> Duration {
        Duration::from_millis(100)
    }
    fn default_probe_timeout() -> Duration {
        Duration::from_secs(2)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

impl Default for HealthGate {
    fn default() -> Self {
        HealthGate {
            docker: true,
            probe: None,
            successes: 1,
            interval: HealthGate::default_interval(),
            probe_timeout: HealthGate::default_probe_timeout(),
            timeout: HealthGate::default_timeout(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// New containers start (and pass their gate) before old ones stop.
    #[default]
    StartFirst,
    /// Old containers stop before new ones start (for services that cannot run twice).
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Put the old revision back and remove the new one.
    #[default]
    Rollback,
    /// Stop where it is (what serves keeps serving) for someone to decide.
    Pause,
}

/// How a rolling update moves (Swarm's `update_config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    #[serde(default = "one")]
    pub parallelism: u32,
    #[serde(default)]
    pub order: UpdateOrder,
    #[serde(default, with = "duration")]
    pub delay: Duration,
    #[serde(default)]
    pub failure_action: FailureAction,
    /// Time an old container's in-flight requests have once it left the route.
    #[serde(default = "UpdateConfig::default_drain", with = "duration")]
    pub drain_timeout: Duration,
}

impl UpdateConfig {
    fn default_drain() -> Duration {
        Duration::from_secs(30)
    }
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            order: UpdateOrder::StartFirst,
            delay: Duration::ZERO,
            failure_action: FailureAction::Rollback,
            drain_timeout: UpdateConfig::default_drain(),
        }
    }
}

/// One canary step: the new revision's share of traffic (percent), held for `pause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    pub weight: u32,
    #[serde(default, with = "duration")]
    pub pause: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Rolling,
    BlueGreen {
        /// How long the old set stays after the switch, before it is removed.
        #[serde(default, with = "duration")]
        keep_old: Duration,
    },
    Canary {
        steps: Vec<CanaryStep>,
    },
}

impl Strategy {
    fn name(&self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen { .. } => "blue-green",
            Strategy::Canary { .. } => "canary",
        }
    }
}

/// When the image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    #[default]
    IfMissing,
    Always,
    Never,
}

/// One step of a rollout, as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RolloutEvent {
    Started {
        service: String,
        revision: String,
        strategy: String,
        replicas: u32,
        /// Containers of earlier revisions serving when it started.
        old: usize,
    },
    BatchStarted {
        batch: usize,
        new: usize,
        retiring: usize,
    },
    ContainerStarted {
        container: String,
        replica: u32,
    },
    ContainerHealthy {
        container: String,
        address: String,
    },
    ContainerFailed {
        container: String,
        reason: String,
    },
    /// The route's backends now (`new_weight`: the new revision's percent, for a canary).
    TrafficShifted {
        backends: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_weight: Option<u32>,
    },
    /// Off the route, and its in-flight requests ended (`clean`) or were cut.
    Drained {
        container: String,
        clean: bool,
    },
    Stopped {
        container: String,
    },
    Removed {
        container: String,
    },
    /// An old container started again by a rollback.
    Restarted {
        container: String,
    },
    Done {
        revision: String,
    },
    RolledBack {
        reason: String,
    },
    Paused {
        reason: String,
    },
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The new revision serves alone; its containers, by name.
    Done { containers: Vec<String> },
    /// The new revision failed; the old one serves.
    RolledBack { reason: String },
    /// The new revision failed and `failure_action` is `pause`: what served keeps serving.
    Paused { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("service `{service}`: {reason}")]
    Invalid { service: String, reason: String },
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// The proxy provider a stack's routes go to: `deploy:ENV/STACK`.
pub fn provider_name(env: &str, stack: &str) -> String {
    format!("deploy:{env}/{stack}")
}

/// Serializes read-modify-write of the deploy providers (services of one stack share one).
static ROUTES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A container with the address traffic reaches it on.
#[derive(Debug, Clone)]
struct Member {
    info: ContainerInfo,
    address: Address,
}

impl Member {
    fn name(&self) -> &str {
        &self.info.name
    }
}

/// The callback events go to.
pub type EventSink = Arc<dyn Fn(&RolloutEvent) + Send + Sync>;

/// Deploys services on a target behind a proxy.
pub struct Rollout<'a, T> {
    target: &'a T,
    proxy: &'a Proxy,
    sink: Option<EventSink>,
    auth: Option<RegistryAuth>,
}

impl<T> std::fmt::Debug for Rollout<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollout").finish_non_exhaustive()
    }
}

/// What one validated spec says, ready to use.
struct Plan<'s> {
    spec: &'s ServiceSpec,
    owner: Owner,
    key: Option<RouteKey>,
    tls: Tls,
}

impl<'a, T: Target> Rollout<'a, T> {
    pub fn new(target: &'a T, proxy: &'a Proxy) -> Self {
        Rollout {
            target,
            proxy,
            sink: None,
            auth: None,
        }
    }

    /// Every event goes to `f` too, in order, as it happens.
    pub fn on_event(mut self, f: impl Fn(&RolloutEvent) + Send + Sync + 'static) -> Self {
        self.sink = Some(Arc::new(f));
        self
    }

    /// Credentials for pulling the image.
    pub fn with_registry_auth(mut self, auth: RegistryAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    fn emit(&self, event: RolloutEvent) {
        tracing::info!(?event, "rollout");
        if let Some(sink) = &self.sink {
            sink(&event);
        }
    }

    fn check<'s>(&self, spec: &'s ServiceSpec) -> Result<Plan<'s>, RolloutError> {
        let invalid = |reason: String| RolloutError::Invalid {
            service: spec.name.clone(),
            reason,
        };
        for (what, v) in [
            ("env", &spec.env),
            ("stack", &spec.stack),
            ("name", &spec.name),
            ("revision", &spec.revision),
            ("image", &spec.image),
            ("network", &spec.network),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(format!("`{what}` is empty")));
            }
        }
        if spec.replicas == 0 {
            return Err(invalid(
                "`replicas` is 0: remove the service instead".into(),
            ));
        }
        if spec.port == 0 {
            return Err(invalid("`port` is 0".into()));
        }
        if spec.update.parallelism == 0 {
            return Err(invalid("`update.parallelism` is 0".into()));
        }
        if let Some(Probe::Http { path, .. }) = &spec.health.probe
            && (!path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(format!(
                "health probe path `{path}` must start with `/` and hold no spaces"
            )));
        }
        if let Strategy::Canary { steps } = &spec.strategy
            && let Some(bad) = steps.iter().find(|s| s.weight > 100)
        {
            return Err(invalid(format!(
                "canary weight {} is more than 100 (percent)",
                bad.weight
            )));
        }
        let (key, tls) = match &spec.route {
            None => (None, Tls::Off),
            Some(r) => {
                let host = Host::parse(&r.host).map_err(|e| invalid(format!("route host: {e}")))?;
                let path = r
                    .path
                    .as_deref()
                    .map(slipway_proxy::route::parse_path)
                    .transpose()
                    .map_err(|e| invalid(format!("route path: {e}")))?;
                let tls = r
                    .tls
                    .as_deref()
                    .map(Tls::parse)
                    .transpose()
                    .map_err(|e| invalid(format!("route tls: {e}")))?
                    .unwrap_or_default();
                (Some(RouteKey::new(host, path)), tls)
            }
        };
        Ok(Plan {
            spec,
            owner: Owner {
                env: spec.env.clone(),
                stack: spec.stack.clone(),
                service: spec.name.clone(),
                revision: spec.revision.clone(),
                replica: None,
            },
            key,
            tls,
        })
    }

    /// Deploys `spec`: see the module documentation.
    pub async fn run(&self, spec: &ServiceSpec) -> Result<Outcome, RolloutError> {
        let plan = self.check(spec)?;
        let shared = Owner {
            service: "-".into(),
            revision: "-".into(),
            ..plan.owner.clone()
        };
        self.target.ensure_network(&spec.network, &shared).await?;
        for m in &spec.template.mounts {
            if m.kind == crate::target::MountKind::Volume && !m.source.is_empty() {
                self.target.ensure_volume(&m.source, &shared).await?;
            }
        }
        self.image(spec).await?;

        // What runs now: serving containers of any revision are the old set; stopped ones
        // are left over from an interrupted rollout and go.
        let selector = Selector::service(&spec.env, &spec.stack, &spec.name);
        let mut old = Vec::new();
        for info in self.target.list_containers(&selector).await? {
            match self.member(spec, info.clone()) {
                Some(m) if info.state == RunState::Running => old.push(m),
                _ => {
                    self.target.remove_container(&info.id).await?;
                    self.emit(RolloutEvent::Removed {
                        container: info.name,
                    });
                }
            }
        }
        self.emit(RolloutEvent::Started {
            service: spec.name.clone(),
            revision: spec.revision.clone(),
            strategy: spec.strategy.name().to_owned(),
            replicas: spec.replicas,
            old: old.len(),
        });
        // The route shows what runs (a restarted server's proxy may not know it yet).
        if !old.is_empty()
            && plan.key.is_some()
            && route_backends(self.proxy, &spec.env, &spec.stack, &spec.name).is_empty()
        {
            self.publish(&plan, vec![self.set("current", &old, 1)]);
        }
        match &spec.strategy {
            Strategy::Rolling => self.rolling(&plan, old).await,
            Strategy::BlueGreen { keep_old } => self.blue_green(&plan, old, *keep_old).await,
            Strategy::Canary { steps } => self.canary(&plan, old, steps).await,
        }
    }

    /// Routes what already runs of `spec`'s service (its running containers of
    /// `spec.revision`), changing no container: a restarted server's proxy knows no deploy
    /// routes until this. How many containers the route now has.
    pub async fn reconcile(&self, spec: &ServiceSpec) -> Result<usize, RolloutError> {
        let plan = self.check(spec)?;
        let selector =
            Selector::service(&spec.env, &spec.stack, &spec.name).revision(&spec.revision);
        let members: Vec<Member> = self
            .target
            .list_containers(&selector)
            .await?
            .into_iter()
            .filter(|info| info.state == RunState::Running)
            .filter_map(|info| self.member(spec, info))
            .collect();
        if plan.key.is_some() && !members.is_empty() {
            self.publish(&plan, vec![self.set("current", &members, 1)]);
        }
        Ok(members.len())
    }

    /// Removes a service: its route, then (drained) every container labelled for it.
    /// Returns how many containers were removed.
    pub async fn remove_service(
        &self,
        env: &str,
        stack: &str,
        service: &str,
        drain_timeout: Duration,
    ) -> Result<usize, RolloutError> {
        let selector = Selector::service(env, stack, service);
        let containers = self.target.list_containers(&selector).await?;
        let live = self.live_backends_of_service(env, stack, service);
        self.replace_route(env, stack, service, None);
        self.wait_drained(live, drain_timeout).await;
        for c in &containers {
            self.target.remove_container(&c.id).await?;
            self.emit(RolloutEvent::Removed {
                container: c.name.clone(),
            });
        }
        Ok(containers.len())
    }

    async fn image(&self, spec: &ServiceSpec) -> Result<(), RolloutError> {
        let pull = match spec.pull {
            PullPolicy::Never => false,
            PullPolicy::Always => true,
            PullPolicy::IfMissing => match self.target.resolve_digest(&spec.image).await {
                Ok(_) => false,
                Err(TargetError::NotFound { .. }) => true,
                Err(e) => return Err(e.into()),
            },
        };
        if pull {
            self.target
                .pull_image(&spec.image, self.auth.as_ref())
                .await?;
        }
        Ok(())
    }

    fn member(&self, spec: &ServiceSpec, info: ContainerInfo) -> Option<Member> {
        let ip = info.ip_on(&spec.network)?;
        let address = Address::from_parts(&ip.to_string(), spec.port).ok()?;
        Some(Member { info, address })
    }

    fn set(&self, name: &str, members: &[Member], weight: u32) -> BackendSet {
        BackendSet {
            name: name.to_owned(),
            weight,
            backends: members
                .iter()
                .map(|m| Backend::new(m.address.clone()))
                .collect(),
        }
    }

    /// Makes `sets` the route's backends (one proxy swap) and says so.
    fn publish(&self, plan: &Plan<'_>, sets: Vec<BackendSet>) {
        let Some(key) = &plan.key else {
            return;
        };
        let sets: Vec<BackendSet> = sets
            .into_iter()
            .filter(|s| !s.backends.is_empty())
            .collect();
        let backends = sets
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address.to_string()))
            .collect();
        let new_weight = (sets.len() > 1)
            .then(|| {
                sets.iter()
                    .find(|s| s.name == plan.spec.revision)
                    .map(|s| s.weight)
            })
            .flatten();
        let route = (!sets.is_empty()).then(|| {
            let mut r = Route::new(
                key.clone(),
                sets,
                RouteSource::Deploy {
                    stack: plan.spec.stack.clone(),
                    service: plan.spec.name.clone(),
                },
            );
            r.tls = plan.tls.clone();
            r.origin = Some(format!("revision {}", plan.spec.revision));
            r
        });
        self.replace_route(&plan.spec.env, &plan.spec.stack, &plan.spec.name, route);
        self.emit(RolloutEvent::TrafficShifted {
            backends,
            new_weight,
        });
    }

    /// Replaces this service's route in its stack's provider (`None` removes it).
    fn replace_route(&self, env: &str, stack: &str, service: &str, route: Option<Route>) {
        let provider = provider_name(env, stack);
        let _one = ROUTES.lock().unwrap_or_else(|p| p.into_inner());
        let mut set = self.proxy.providers().remove(&provider).unwrap_or_default();
        set.routes.retain(|r| {
            !matches!(&r.source, RouteSource::Deploy { stack: s, service: v } if s == stack && v == service)
        });
        set.routes.extend(route);
        self.proxy.set_provider(&provider, set);
    }

    /// The live backends of `members`, taken before they leave the route (afterwards the
    /// snapshot no longer has them).
    fn live_backends(&self, members: &[Member]) -> Vec<(String, Arc<LiveBackend>)> {
        let snapshot = self.proxy.snapshot();
        members
            .iter()
            .filter_map(|m| {
                snapshot
                    .backends()
                    .find(|b| b.address == m.address)
                    .map(|b| (m.name().to_owned(), b.clone()))
            })
            .collect()
    }

    fn live_backends_of_service(
        &self,
        env: &str,
        stack: &str,
        service: &str,
    ) -> Vec<(String, Arc<LiveBackend>)> {
        let provider = provider_name(env, stack);
        let Some(set) = self.proxy.providers().remove(&provider) else {
            return Vec::new();
        };
        let snapshot = self.proxy.snapshot();
        set.routes
            .iter()
            .filter(|r| matches!(&r.source, RouteSource::Deploy { stack: s, service: v } if s == stack && v == service))
            .flat_map(|r| r.backends())
            .filter_map(|b| {
                snapshot
                    .backends()
                    .find(|l| l.address == b.address)
                    .map(|l| (b.address.to_string(), l.clone()))
            })
            .collect()
    }

    /// Waits until every backend is gone from the proxy (its last request ended) or
    /// `timeout` passed; emits `Drained` for each.
    async fn wait_drained(&self, live: Vec<(String, Arc<LiveBackend>)>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for (name, backend) in live {
            let clean = loop {
                match backend.state() {
                    BackendState::Gone => break true,
                    // Still (or again) on a route: another route or service shares it.
                    BackendState::Serving
                    | BackendState::Starting
                    | BackendState::Unhealthy
                    | BackendState::Ejected
                        if backend.in_flight() == 0 =>
                    {
                        break true;
                    }
                    _ => {}
                }
                if Instant::now() >= deadline {
                    break backend.in_flight() == 0;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if !clean {
                tracing::warn!(container = %name, in_flight = backend.in_flight(), "drain timeout passed");
            }
            self.emit(RolloutEvent::Drained {
                container: name,
                clean,
            });
        }
    }

    fn stop_grace(&self, plan: &Plan<'_>) -> Duration {
        plan.spec
            .template
            .stop_grace
            .unwrap_or(Duration::from_secs(10))
    }

    /// Starts `count` new containers, replicas `first..`, and gates them all; the healthy
    /// ones, or the reason of the first that failed (all of them then removed).
    async fn start_batch(
        &self,
        plan: &Plan<'_>,
        first: u32,
        count: u32,
    ) -> Result<Vec<Member>, String> {
        let spec = plan.spec;
        let mut template = spec.template.clone();
        template.name = None;
        template.image = spec.image.clone();
        if !template.networks.iter().any(|n| n.name == spec.network) {
            template.networks.insert(
                0,
                NetworkAttachment {
                    name: spec.network.clone(),
                    aliases: Vec::new(),
                },
            );
        }
        let mut started = Vec::new();
        let mut failure = None;
        for replica in first..first + count {
            match self
                .target
                .run_container(&plan.owner.replica(replica), &template)
                .await
            {
                Ok(info) => {
                    self.emit(RolloutEvent::ContainerStarted {
                        container: info.name.clone(),
                        replica,
                    });
                    started.push(info);
                }
                Err(e) => {
                    failure = Some(format!("starting replica {replica}: {e}"));
                    break;
                }
            }
        }
        if failure.is_none() {
            let gates = started
                .iter()
                .map(|c| self.gate(plan, c, &plan.spec.health));
            let results = futures_util::future::join_all(gates).await;
            let mut healthy = Vec::new();
            for (c, r) in started.iter().zip(results) {
                match r {
                    Ok(m) => {
                        self.emit(RolloutEvent::ContainerHealthy {
                            container: m.name().to_owned(),
                            address: m.address.to_string(),
                        });
                        healthy.push(m);
                    }
                    Err(reason) => {
                        self.emit(RolloutEvent::ContainerFailed {
                            container: c.name.clone(),
                            reason: reason.clone(),
                        });
                        failure.get_or_insert(format!("{}: {reason}", c.name));
                    }
                }
            }
            if failure.is_none() {
                return Ok(healthy);
            }
        }
        // Nothing of this batch ever got traffic.
        for c in &started {
            self.remove(&c.id, &c.name).await;
        }
        Err(failure.unwrap_or_default())
    }

    /// Waits until the container passes its gate.
    async fn gate(
        &self,
        plan: &Plan<'_>,
        c: &ContainerInfo,
        health: &HealthGate,
    ) -> Result<Member, String> {
        let spec = plan.spec;
        let deadline = Instant::now() + health.timeout;
        let mut streak = 0u32;
        let mut last = "it did not start".to_owned();
        loop {
            let info = match self.target.inspect_container(&c.id).await {
                Ok(Some(info)) => info,
                Ok(None) => return Err("the container is gone".into()),
                Err(e) => return Err(e.to_string()),
            };
            if matches!(info.state, RunState::Exited | RunState::Dead) {
                return Err(format!(
                    "it exited (code {})",
                    info.exit_code.map_or("unknown".into(), |c| c.to_string())
                ));
            }
            let engine_checks = health.docker && info.health != EngineHealth::None;
            let engine_ok = !engine_checks || info.health == EngineHealth::Healthy;
            if engine_checks && !engine_ok {
                last = format!("Docker says it is {:?}", info.health).to_lowercase();
            }
            // Docker calls a container unhealthy only after its check failed `retries`
            // times in a row: that is an answer, not a wait (as Swarm fails such a task).
            if engine_checks && info.health == EngineHealth::Unhealthy {
                return Err("its health check failed (Docker says it is unhealthy)".into());
            }
            let probe = match (&health.probe, engine_checks) {
                (Some(p), _) => Some(p.clone()),
                (None, false) => Some(Probe::Tcp),
                (None, true) => None,
            };
            if info.state == RunState::Running
                && let Some(member) = self.member(spec, info)
            {
                match &probe {
                    None => {}
                    Some(p) => {
                        let addr = SocketAddr::new(
                            member
                                .info
                                .ip_on(&spec.network)
                                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                            spec.port,
                        );
                        match probe_once(p, addr, health.probe_timeout).await {
                            Ok(()) => streak += 1,
                            Err(e) => {
                                streak = 0;
                                last = format!("probe: {e}");
                            }
                        }
                    }
                }
                let probed = probe.is_none() || streak >= health.successes.max(1);
                if engine_ok && probed {
                    return Ok(member);
                }
            } else {
                last = "it has no address on the service network yet".into();
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not healthy within {} ({last})",
                    humantime::format_duration(health.timeout)
                ));
            }
            tokio::time::sleep(health.interval).await;
        }
    }

    async fn stop(&self, plan: &Plan<'_>, m: &Member) {
        match self
            .target
            .stop_container(&m.info.id, self.stop_grace(plan))
            .await
        {
            Ok(()) => self.emit(RolloutEvent::Stopped {
                container: m.name().to_owned(),
            }),
            Err(e) => tracing::warn!(container = m.name(), error = %e, "stopping"),
        }
    }

    async fn remove(&self, id: &str, name: &str) {
        match self.target.remove_container(id).await {
            Ok(()) => self.emit(RolloutEvent::Removed {
                container: name.to_owned(),
            }),
            Err(e) => tracing::warn!(container = name, error = %e, "removing"),
        }
    }

    /// Takes `doomed` off the route (leaving `keep`), drains and stops them.
    async fn retire(&self, plan: &Plan<'_>, keep: &[Member], doomed: &[Member]) {
        if doomed.is_empty() {
            return;
        }
        let live = self.live_backends(doomed);
        self.publish(plan, vec![self.set(&plan.spec.revision, keep, 1)]);
        self.wait_drained(live, plan.spec.update.drain_timeout)
            .await;
        for m in doomed {
            self.stop(plan, m).await;
        }
    }

    async fn rolling(
        &self,
        plan: &Plan<'_>,
        mut old: Vec<Member>,
    ) -> Result<Outcome, RolloutError> {
        let spec = plan.spec;
        let total = spec.replicas;
        let mut new: Vec<Member> = Vec::new();
        let mut retired: Vec<Member> = Vec::new();
        let mut batch = 0;
        while (new.len() as u32) < total {
            batch += 1;
            let started = new.len() as u32;
            let count = spec.update.parallelism.min(total - started);
            let last = started + count == total;
            let retiring = if last {
                old.len()
            } else {
                (count as usize).min(old.len())
            };
            self.emit(RolloutEvent::BatchStarted {
                batch,
                new: count as usize,
                retiring,
            });
            if spec.update.order == UpdateOrder::StopFirst {
                let doomed: Vec<Member> = old.drain(..retiring).collect();
                let keep: Vec<Member> = old.iter().chain(&new).cloned().collect();
                self.retire(plan, &keep, &doomed).await;
                retired.extend(doomed);
            }
            match self.start_batch(plan, started + 1, count).await {
                Ok(healthy) => {
                    new.extend(healthy);
                    let serving: Vec<Member> = old.iter().chain(&new).cloned().collect();
                    self.publish(plan, vec![self.set(&spec.revision, &serving, 1)]);
                }
                Err(reason) => return Ok(self.failed(plan, reason, old, new, retired).await),
            }
            if spec.update.order == UpdateOrder::StartFirst {
                let doomed: Vec<Member> = old.drain(..retiring).collect();
                let keep: Vec<Member> = old.iter().chain(&new).cloned().collect();
                self.retire(plan, &keep, &doomed).await;
                retired.extend(doomed);
            }
            if !last && !spec.update.delay.is_zero() {
                tokio::time::sleep(spec.update.delay).await;
            }
        }
        for m in retired.iter().chain(&old) {
            self.remove(&m.info.id, m.name()).await;
        }
        Ok(self.done(plan, &new))
    }

    fn done(&self, plan: &Plan<'_>, new: &[Member]) -> Outcome {
        self.emit(RolloutEvent::Done {
            revision: plan.spec.revision.clone(),
        });
        Outcome::Done {
            containers: new.iter().map(|m| m.name().to_owned()).collect(),
        }
    }

    /// A rolling batch failed: pause, or put the old containers back and remove the new.
    async fn failed(
        &self,
        plan: &Plan<'_>,
        reason: String,
        old: Vec<Member>,
        new: Vec<Member>,
        retired: Vec<Member>,
    ) -> Outcome {
        let spec = plan.spec;
        if spec.update.failure_action == FailureAction::Pause {
            self.emit(RolloutEvent::Paused {
                reason: reason.clone(),
            });
            return Outcome::Paused { reason };
        }
        let mut back = old;
        for m in retired {
            if let Err(e) = self.target.start_container(&m.info.id).await {
                tracing::warn!(container = m.name(), error = %e, "restarting for a rollback");
                self.remove(&m.info.id, m.name()).await;
                continue;
            }
            self.emit(RolloutEvent::Restarted {
                container: m.name().to_owned(),
            });
            // The old revision passed its own gate before; its probe may differ from the
            // new one's, so it is only asked to run, listen and not be unhealthy.
            let again = HealthGate {
                probe: Some(Probe::Tcp),
                successes: 1,
                ..plan.spec.health.clone()
            };
            match self.gate(plan, &m.info, &again).await {
                Ok(again) => {
                    back.push(again);
                    let serving: Vec<Member> = back.iter().chain(&new).cloned().collect();
                    self.publish(plan, vec![self.set("current", &serving, 1)]);
                }
                Err(why) => {
                    self.emit(RolloutEvent::ContainerFailed {
                        container: m.name().to_owned(),
                        reason: why,
                    });
                    self.remove(&m.info.id, m.name()).await;
                }
            }
        }
        if !new.is_empty() {
            if back.is_empty() {
                // Nothing of the old revision could come back: the new one keeps serving.
                tracing::warn!(service = %spec.name, "rollback found no old container to serve");
            } else {
                let live = self.live_backends(&new);
                self.publish(plan, vec![self.set("current", &back, 1)]);
                self.wait_drained(live, spec.update.drain_timeout).await;
                for m in &new {
                    self.stop(plan, m).await;
                    self.remove(&m.info.id, m.name()).await;
                }
            }
        }
        self.emit(RolloutEvent::RolledBack {
            reason: reason.clone(),
        });
        Outcome::RolledBack { reason }
    }

    /// Blue-green or canary: the new set failed before it got any traffic.
    fn not_started(&self, plan: &Plan<'_>, reason: String) -> Outcome {
        if plan.spec.update.failure_action == FailureAction::Pause {
            self.emit(RolloutEvent::Paused {
                reason: reason.clone(),
            });
            Outcome::Paused { reason }
        } else {
            self.emit(RolloutEvent::RolledBack {
                reason: reason.clone(),
            });
            Outcome::RolledBack { reason }
        }
    }

    /// Drains `old` (already off the route), keeps them until `keep_until`, removes them.
    async fn finish_old(
        &self,
        plan: &Plan<'_>,
        old: &[Member],
        live: Vec<(String, Arc<LiveBackend>)>,
        keep_until: Instant,
    ) {
        self.wait_drained(live, plan.spec.update.drain_timeout)
            .await;
        tokio::time::sleep_until(keep_until).await;
        for m in old {
            self.stop(plan, m).await;
            self.remove(&m.info.id, m.name()).await;
        }
    }

    async fn blue_green(
        &self,
        plan: &Plan<'_>,
        old: Vec<Member>,
        keep_old: Duration,
    ) -> Result<Outcome, RolloutError> {
        let spec = plan.spec;
        self.emit(RolloutEvent::BatchStarted {
            batch: 1,
            new: spec.replicas as usize,
            retiring: old.len(),
        });
        let new = match self.start_batch(plan, 1, spec.replicas).await {
            Ok(new) => new,
            Err(reason) => return Ok(self.not_started(plan, reason)),
        };
        let live = self.live_backends(&old);
        // The switch: one swap of the route's backends.
        self.publish(plan, vec![self.set(&spec.revision, &new, 1)]);
        self.finish_old(plan, &old, live, Instant::now() + keep_old)
            .await;
        Ok(self.done(plan, &new))
    }

    async fn canary(
        &self,
        plan: &Plan<'_>,
        old: Vec<Member>,
        steps: &[CanaryStep],
    ) -> Result<Outcome, RolloutError> {
        let spec = plan.spec;
        self.emit(RolloutEvent::BatchStarted {
            batch: 1,
            new: spec.replicas as usize,
            retiring: old.len(),
        });
        let new = match self.start_batch(plan, 1, spec.replicas).await {
            Ok(new) => new,
            Err(reason) => return Ok(self.not_started(plan, reason)),
        };
        // Set names are unique within a route; the new set is named by its revision.
        let old_name = if spec.revision == "stable" {
            "previous"
        } else {
            "stable"
        };
        if !old.is_empty() {
            for step in steps {
                let w = step.weight.min(100);
                self.publish(
                    plan,
                    vec![
                        self.set(old_name, &old, 100 - w),
                        self.set(&spec.revision, &new, w),
                    ],
                );
                if let Err(reason) = self.watch(plan, &new, step.pause).await {
                    // Abort: everything back on the old set, the new one removed.
                    let live = self.live_backends(&new);
                    self.publish(plan, vec![self.set(old_name, &old, 1)]);
                    self.wait_drained(live, spec.update.drain_timeout).await;
                    for m in &new {
                        self.stop(plan, m).await;
                        self.remove(&m.info.id, m.name()).await;
                    }
                    self.emit(RolloutEvent::RolledBack {
                        reason: reason.clone(),
                    });
                    return Ok(Outcome::RolledBack { reason });
                }
            }
        }
        // Promote.
        let live = self.live_backends(&old);
        self.publish(plan, vec![self.set(&spec.revision, &new, 1)]);
        self.finish_old(plan, &old, live, Instant::now()).await;
        Ok(self.done(plan, &new))
    }

    /// Holds for `pause`, failing as soon as a new container stops running or the engine
    /// calls it unhealthy.
    async fn watch(&self, plan: &Plan<'_>, new: &[Member], pause: Duration) -> Result<(), String> {
        let until = Instant::now() + pause;
        loop {
            for m in new {
                match self.target.inspect_container(&m.info.id).await {
                    Ok(Some(i))
                        if i.state == RunState::Running
                            && !(plan.spec.health.docker
                                && i.health == EngineHealth::Unhealthy) => {}
                    Ok(Some(i)) => {
                        return Err(format!(
                            "{} is {:?}/{:?} during the canary",
                            m.name(),
                            i.state,
                            i.health
                        )
                        .to_lowercase());
                    }
                    Ok(None) => return Err(format!("{} is gone during the canary", m.name())),
                    Err(e) => return Err(e.to_string()),
                }
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(500))).await;
        }
    }
}

/// One probe of `addr`.
async fn probe_once(probe: &Probe, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let Probe::Http { path, status } = probe else {
            return Ok(());
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: slipway-deploy\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("writing to {addr}: {e}"))?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading from {addr}: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("GET {path}: not an HTTP response"))?;
        let ok = match status {
            Some(s) => code == *s,
            None => (200..400).contains(&code),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("GET {path} answered {code}"))
        }
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| {
        format!(
            "no answer from {addr} within {}",
            humantime::format_duration(timeout)
        )
    })?
}

/// Every serving route's backends by set, for logs and tests: `set → addresses`.
pub fn route_backends(
    proxy: &Proxy,
    env: &str,
    stack: &str,
    service: &str,
) -> BTreeMap<String, Vec<String>> {
    let provider = provider_name(env, stack);
    let mut out = BTreeMap::new();
    if let Some(set) = proxy.providers().remove(&provider) {
        for r in set.routes.iter().filter(|r| matches!(&r.source, RouteSource::Deploy { stack: s, service: v } if s == stack && v == service)) {
            for s in &r.backend_sets {
                out.entry(s.name.clone()).or_insert_with(Vec::new).extend(s.backends.iter().map(|b| b.address.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_spec_reads_with_defaults() {
        let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
            "env": "prod", "stack": "shop", "name": "web", "revision": "7",
            "image": "registry/shop/web@sha256:00", "port": 8080, "network": "shop",
            "route": {"host": "shop.example.com"},
            "health": {"probe": {"type": "http", "path": "/health"}, "successes": 3, "timeout": "30s"},
            "update": {"parallelism": 2, "order": "stop-first", "delay": "5s", "failure_action": "pause"},
            "strategy": {"type": "canary", "steps": [{"weight": 10, "pause": "1m"}, {"weight": 50}]}
        }))
        .expect("a spec");
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.health.successes, 3);
        assert_eq!(spec.health.timeout, Duration::from_secs(30));
        assert_eq!(spec.update.order, UpdateOrder::StopFirst);
        assert_eq!(spec.update.failure_action, FailureAction::Pause);
        assert_eq!(
            spec.strategy,
            Strategy::Canary {
                steps: vec![
                    CanaryStep {
                        weight: 10,
                        pause: Duration::from_secs(60)
                    },
                    CanaryStep {
                        weight: 50,
                        pause: Duration::ZERO
                    },
                ]
            }
        );
        let back = serde_json::to_value(&spec).expect("serializes");
        let again: ServiceSpec = serde_json::from_value(back).expect("reads back");
        assert_eq!(again, spec);
    }

    /// The server spawns rollouts: their futures must be `Send` (checked by compiling).
    #[allow(dead_code)]
    fn rollouts_can_be_spawned(r: &Rollout<'_, crate::target::DockerTarget>, s: &ServiceSpec) {
        fn send<F: Send>(_: F) {}
        send(r.run(s));
        send(r.remove_service("e", "s", "v", Duration::ZERO));
    }

    #[test]
    fn events_serialize_with_their_name() {
        let e = RolloutEvent::Drained {
            container: "c".into(),
            clean: true,
        };
        assert_eq!(
            serde_json::to_value(&e).expect("json"),
            serde_json::json!({"event": "drained", "container": "c", "clean": true})
        );
    }
}
