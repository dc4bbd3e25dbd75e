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
//!   wait for their in-flight requests (bounded by `drain_timeout`); then `delay` and the
//!   next batch. What the engine does between batches is pipelined off the critical path:
//!   while a batch is gated, the next batch's containers are created (not started) and the
//!   previous batch's drained old containers are stopped. Stop-first takes the old ones off and stops them before
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
//! The bake ([`Bake`]): once the new revision serves alone, it is watched for `window`
//! with the old set still running off the route (rolling start-first keeps its retired
//! containers running for this); when the share of its requests the proxy saw answered
//! 5xx crosses `max_error_rate` (after `min_requests`), traffic goes back to the old set
//! within one tick (100 ms) and the new set is removed. The same threshold watches a
//! canary's steps.
//!
//! A running rollout obeys its [`Control`] ([`Rollout::with_control`]): `pause` holds it
//! at the next step (before a batch, a canary weight's clock, the bake's clock) until
//! `resume`; `promote` skips what is left to wait for (canary steps, batch delays, the
//! bake); `abort` puts the old revision back and removes the new one, whatever
//! `failure_action` says.
//!
//! The health gate ([`HealthGate`]): a container is healthy when it runs, has an address
//! the proxy reaches ([`ContainerInfo::endpoint`]: its IP on the service's network, or on
//! Swarm its task's published port on its node), the engine says `healthy` (when it has a healthcheck and
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
use slipway_proxy::StatusCounts;
use slipway_proxy::balance::LiveBackend;
use slipway_proxy::{
    Address, Backend, BackendSet, BackendState, Host, Proxy, Route, RouteKey, RouteSource, Tls,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Watch the new revision after the switch; `None`: no bake.
    #[serde(default)]
    pub bake: Option<Bake>,
}

/// The watch after the switch (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bake {
    #[serde(with = "duration")]
    pub window: Duration,
    /// The share (0 to 1) of the new revision's requests that may answer 5xx.
    #[serde(default = "Bake::default_max_error_rate")]
    pub max_error_rate: f64,
    /// Requests seen before the rate counts (a first 500 is not yet a rate).
    #[serde(default = "Bake::default_min_requests")]
    pub min_requests: u64,
}

impl Bake {
    pub fn default_max_error_rate() -> f64 {
        0.05
    }
    pub fn default_min_requests() -> u64 {
        20
    }
}

/// What a person asks of a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Hold at the next step until resumed.
    Pause,
    Resume,
    /// Go all the way now: the remaining canary steps, batch delays and bake are skipped.
    Promote,
    /// Put the old revision back and remove the new one.
    Abort,
}

impl std::str::FromStr for Command {
    type Err = String;
    fn from_str(s: &str) -> Result<Command, String> {
        match s {
            "pause" => Ok(Command::Pause),
            "resume" => Ok(Command::Resume),
            "promote" => Ok(Command::Promote),
            "abort" => Ok(Command::Abort),
            other => Err(format!(
                "`{other}` is not a rollout command (pause, resume, promote or abort)"
            )),
        }
    }
}

/// What has been asked so far; promote and abort stay asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Asked {
    pub paused: bool,
    pub promoted: bool,
    pub aborted: bool,
}

/// The handle a person steers running rollouts with: every rollout given a clone obeys
/// it (a stack's services share one).
#[derive(Debug, Clone)]
pub struct Control(Arc<watch::Sender<Asked>>);

impl Default for Control {
    fn default() -> Control {
        Control(Arc::new(watch::Sender::new(Asked::default())))
    }
}

impl Control {
    pub fn send(&self, command: Command) {
        self.0.send_modify(|a| match command {
            Command::Pause => a.paused = true,
            Command::Resume => a.paused = false,
            Command::Promote => {
                a.promoted = true;
                a.paused = false;
            }
            Command::Abort => {
                a.aborted = true;
                a.paused = false;
            }
        });
    }

    pub fn asked(&self) -> Asked {
        *self.0.borrow()
    }
}

/// The reason of a rollout a person aborted.
const ABORTED: &str = "aborted by a user";

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
        Duration::from_millis(50)
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        /// How long the engine took to start it (to create it too, unless created ahead).
        #[serde(default)]
        engine_ms: u64,
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
    /// A person paused the rollout: it holds here until resumed.
    Held,
    Resumed,
    /// A person promoted it: what was left to wait for is skipped.
    Promoted,
    /// The new revision serves alone and is watched for `window`.
    BakeStarted {
        #[serde(with = "duration")]
        window: Duration,
        max_error_rate: f64,
    },
    /// The bake is over; what the new revision answered meanwhile.
    BakePassed {
        requests: u64,
        server_errors: u64,
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

/// Containers created ahead of their batch, by replica number.
type Ready = BTreeMap<u32, ContainerInfo>;

/// The callback events go to.
pub type EventSink = Arc<dyn Fn(&RolloutEvent) + Send + Sync>;

/// Deploys services on a target behind a proxy.
pub struct Rollout<'a, T> {
    target: &'a T,
    proxy: &'a Proxy,
    sink: Option<EventSink>,
    auth: Option<RegistryAuth>,
    control: Control,
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
            control: Control::default(),
        }
    }

    /// Obeys `control` (see the module documentation); without one nobody can steer it.
    pub fn with_control(mut self, control: Control) -> Self {
        self.control = control;
        self
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
        if let Some(b) = &spec.bake
            && !(0.0..=1.0).contains(&b.max_error_rate)
        {
            return Err(invalid(format!(
                "bake max_error_rate {} is not a share between 0 and 1",
                b.max_error_rate
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
        let at = info.endpoint(&spec.network, spec.port)?;
        let address = Address::from_parts(&at.ip().to_string(), at.port()).ok()?;
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

    /// Every container's spec: the template with the image, on the service network.
    fn container_spec(&self, plan: &Plan<'_>) -> ContainerSpec {
        let spec = plan.spec;
        let mut template = spec.template.clone();
        template.name = None;
        template.image = spec.image.clone();
        if !template.proxied_ports.contains(&spec.port) {
            template.proxied_ports.push(spec.port);
        }
        if !template.networks.iter().any(|n| n.name == spec.network) {
            template.networks.insert(
                0,
                NetworkAttachment {
                    name: spec.network.clone(),
                    aliases: Vec::new(),
                },
            );
        }
        template
    }

    /// Creates (not starts) replicas `first..first + count`; one that fails is left out
    /// (its start then tries again and says why).
    async fn create_ahead(&self, plan: &Plan<'_>, first: u32, count: u32) -> Ready {
        let template = self.container_spec(plan);
        let mut ready = Ready::new();
        for replica in first..first + count {
            match self
                .target
                .create_container(&plan.owner.replica(replica), &template)
                .await
            {
                Ok(info) => {
                    ready.insert(replica, info);
                }
                Err(e) => tracing::warn!(replica, error = %e, "creating a container ahead"),
            }
        }
        ready
    }

    /// Starts `count` new containers, replicas `first..` (those in `ready` were created
    /// ahead), and gates them all; meanwhile it creates the next batch's (`ahead`: first
    /// replica and count) and stops `stopping` (old containers already off the route). The
    /// healthy ones and the next batch's, or the reason of the first that failed (all of
    /// them then removed).
    async fn start_batch(
        &self,
        plan: &Plan<'_>,
        first: u32,
        count: u32,
        mut ready: Ready,
        ahead: Option<(u32, u32)>,
        stopping: &[Member],
    ) -> Result<(Vec<Member>, Ready), String> {
        let template = self.container_spec(plan);
        let mut started = Vec::new();
        let mut failure = None;
        for replica in first..first + count {
            if self.control.asked().aborted {
                failure = Some(ABORTED.to_owned());
                break;
            }
            let asked = Instant::now();
            let run = match ready.remove(&replica) {
                Some(created) => match self.target.start_container(&created.id).await {
                    Ok(()) => Ok(created),
                    Err(e) => {
                        self.remove(&created.id, &created.name).await;
                        Err(e)
                    }
                },
                None => {
                    self.target
                        .run_container(&plan.owner.replica(replica), &template)
                        .await
                }
            };
            match run {
                Ok(info) => {
                    self.emit(RolloutEvent::ContainerStarted {
                        container: info.name.clone(),
                        replica,
                        engine_ms: asked.elapsed().as_millis() as u64,
                    });
                    started.push(info);
                }
                Err(e) => {
                    failure = Some(format!("starting replica {replica}: {e}"));
                    break;
                }
            }
        }
        // Left over only when a start failed: nothing will start them.
        for c in ready.values() {
            self.remove(&c.id, &c.name).await;
        }
        let mut next = Ready::new();
        if failure.is_none() {
            let gates = started
                .iter()
                .map(|c| self.gate(plan, c, &plan.spec.health, true));
            let create_next = async {
                match ahead {
                    Some((first, count)) => self.create_ahead(plan, first, count).await,
                    None => Ready::new(),
                }
            };
            let stop_old =
                futures_util::future::join_all(stopping.iter().map(|m| self.stop(plan, m)));
            let (results, created, _) =
                tokio::join!(futures_util::future::join_all(gates), create_next, stop_old);
            next = created;
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
                return Ok((healthy, next));
            }
        } else {
            futures_util::future::join_all(stopping.iter().map(|m| self.stop(plan, m))).await;
        }
        // Nothing of this batch ever got traffic.
        for c in started.iter().chain(next.values()) {
            self.remove(&c.id, &c.name).await;
        }
        Err(failure.unwrap_or_default())
    }

    /// Waits until the container passes its gate; an `abortable` wait ends with the abort.
    async fn gate(
        &self,
        plan: &Plan<'_>,
        c: &ContainerInfo,
        health: &HealthGate,
        abortable: bool,
    ) -> Result<Member, String> {
        let spec = plan.spec;
        let deadline = Instant::now() + health.timeout;
        let mut streak = 0u32;
        let mut last = "it did not start".to_owned();
        loop {
            if abortable && self.control.asked().aborted {
                return Err(ABORTED.into());
            }
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
                        let addr = member
                            .info
                            .endpoint(&spec.network, spec.port)
                            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], spec.port)));
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

    /// Takes `doomed` off the route (leaving `keep`) and drains them; with `stop`, stops
    /// them too.
    async fn retire(&self, plan: &Plan<'_>, keep: &[Member], doomed: &[Member], stop: bool) {
        if doomed.is_empty() {
            return;
        }
        let live = self.live_backends(doomed);
        self.publish(plan, vec![self.set(&plan.spec.revision, keep, 1)]);
        self.wait_drained(live, plan.spec.update.drain_timeout)
            .await;
        if stop {
            for m in doomed {
                self.stop(plan, m).await;
            }
        }
    }

    /// Returns at once unless paused (then when resumed); `Err` once aborted.
    async fn checkpoint(&self) -> Result<(), String> {
        let mut asked = self.control.0.subscribe();
        let mut held = false;
        loop {
            let now = *asked.borrow_and_update();
            if now.aborted {
                return Err(ABORTED.into());
            }
            if !now.paused {
                if held {
                    self.emit(RolloutEvent::Resumed);
                }
                return Ok(());
            }
            if !held {
                held = true;
                self.emit(RolloutEvent::Held);
            }
            // The sender lives in `self.control`: `changed` cannot fail while we wait.
            let _ = asked.changed().await;
        }
    }

    /// Holds for `length` of unpaused time, watching `new`: `Ok` at its end or on a
    /// promote; `Err` with the reason once aborted, once a new container stops or the
    /// engine calls it unhealthy, or once `errors` says the rate crossed its threshold.
    async fn hold(
        &self,
        plan: &Plan<'_>,
        new: &[Member],
        length: Duration,
        errors: Option<&ErrorWatch>,
    ) -> Result<(), String> {
        const TICK: Duration = Duration::from_millis(100);
        let mut asked = self.control.0.subscribe();
        let mut left = length;
        let mut next_inspect = Instant::now();
        loop {
            let now = *asked.borrow_and_update();
            if now.aborted {
                return Err(ABORTED.into());
            }
            if now.promoted {
                return Ok(());
            }
            if now.paused {
                self.checkpoint().await?;
                continue;
            }
            if let Some(w) = errors {
                w.check(self.proxy)?;
            }
            if Instant::now() >= next_inspect {
                self.still_running(plan, new).await?;
                next_inspect = Instant::now() + Duration::from_millis(500);
            }
            if left.is_zero() {
                return Ok(());
            }
            let step = left.min(TICK);
            let began = Instant::now();
            tokio::select! {
                () = tokio::time::sleep(step) => {}
                _ = asked.changed() => {}
            }
            left = left.saturating_sub(began.elapsed());
        }
    }

    /// `Err` when one of `new` stopped running or the engine calls it unhealthy.
    async fn still_running(&self, plan: &Plan<'_>, new: &[Member]) -> Result<(), String> {
        for m in new {
            match self.target.inspect_container(&m.info.id).await {
                Ok(Some(i))
                    if i.state == RunState::Running
                        && !(plan.spec.health.docker && i.health == EngineHealth::Unhealthy) => {}
                Ok(Some(i)) => {
                    return Err(format!(
                        "{} turned {:?}/{:?} after it got traffic",
                        m.name(),
                        i.state,
                        i.health
                    )
                    .to_lowercase());
                }
                Ok(None) => return Err(format!("{} is gone", m.name())),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// The error rate of `new` from now on, against the bake's threshold (if any).
    fn error_watch(&self, plan: &Plan<'_>, new: &[Member]) -> Option<ErrorWatch> {
        let bake = plan.spec.bake.as_ref()?;
        let key = plan.key.clone()?;
        let addresses: Vec<Address> = new.iter().map(|m| m.address.clone()).collect();
        let start = ErrorWatch::read(self.proxy, &key, &addresses);
        Some(ErrorWatch {
            key,
            addresses,
            start,
            max_rate: bake.max_error_rate,
            min_requests: bake.min_requests,
        })
    }

    /// The bake, when the spec has one and there is an old set to go back to.
    async fn bake(&self, plan: &Plan<'_>, new: &[Member], has_old: bool) -> Result<(), String> {
        let Some(bake) = plan.spec.bake.as_ref().filter(|_| has_old) else {
            return Ok(());
        };
        self.emit(RolloutEvent::BakeStarted {
            window: bake.window,
            max_error_rate: bake.max_error_rate,
        });
        let watch = self.error_watch(plan, new);
        self.hold(plan, new, bake.window, watch.as_ref()).await?;
        let seen = watch
            .map(|w| ErrorWatch::read(self.proxy, &w.key, &w.addresses).since(w.start))
            .unwrap_or_default();
        self.emit(RolloutEvent::BakePassed {
            requests: seen.total,
            server_errors: seen.server_errors,
        });
        Ok(())
    }

    async fn rolling(
        &self,
        plan: &Plan<'_>,
        mut old: Vec<Member>,
    ) -> Result<Outcome, RolloutError> {
        let spec = plan.spec;
        let total = spec.replicas;
        let had_old = !old.is_empty();
        let start_first = spec.update.order == UpdateOrder::StartFirst;
        // Retired containers stay running through a bake, for an instant way back.
        let kept = spec.bake.is_some() && start_first;
        let mut new: Vec<Member> = Vec::new();
        let mut retired: Vec<Member> = Vec::new();
        // The next batch's containers, created while this one was gated.
        let mut ready = Ready::new();
        // Old containers off the route and drained, stopped while the next batch starts.
        let mut stopping: Vec<Member> = Vec::new();
        let mut batch = 0;
        while (new.len() as u32) < total {
            batch += 1;
            if let Err(reason) = self.checkpoint().await {
                self.discard(&ready).await;
                return Ok(self.failed(plan, reason, old, new, retired).await);
            }
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
            if !start_first {
                let doomed: Vec<Member> = old.drain(..retiring).collect();
                let keep: Vec<Member> = old.iter().chain(&new).cloned().collect();
                self.retire(plan, &keep, &doomed, true).await;
                retired.extend(doomed);
            }
            let ahead = (!last).then(|| {
                let next = started + count;
                (next + 1, spec.update.parallelism.min(total - next))
            });
            let stop_now = std::mem::take(&mut stopping);
            match self
                .start_batch(
                    plan,
                    started + 1,
                    count,
                    std::mem::take(&mut ready),
                    ahead,
                    &stop_now,
                )
                .await
            {
                Ok((healthy, next)) => {
                    ready = next;
                    new.extend(healthy);
                    let serving: Vec<Member> = old.iter().chain(&new).cloned().collect();
                    self.publish(plan, vec![self.set(&spec.revision, &serving, 1)]);
                }
                Err(reason) => return Ok(self.failed(plan, reason, old, new, retired).await),
            }
            if start_first {
                let doomed: Vec<Member> = old.drain(..retiring).collect();
                let keep: Vec<Member> = old.iter().chain(&new).cloned().collect();
                self.retire(plan, &keep, &doomed, false).await;
                if !kept {
                    stopping.extend(doomed.iter().cloned());
                }
                retired.extend(doomed);
            }
            if !last
                && !spec.update.delay.is_zero()
                && let Err(reason) = self.hold(plan, &new, spec.update.delay, None).await
            {
                self.discard(&ready).await;
                return Ok(self.failed(plan, reason, old, new, retired).await);
            }
        }
        if let Err(reason) = self.bake(plan, &new, had_old).await {
            return Ok(self.failed(plan, reason, old, new, retired).await);
        }
        // The old set goes at once: each is off the route and drained. Those the batches
        // stopped already are not stopped twice.
        let running: Vec<&Member> = if kept {
            retired.iter().chain(&old).collect()
        } else {
            stopping.iter().chain(&old).collect()
        };
        futures_util::future::join_all(running.into_iter().map(|m| self.stop(plan, m))).await;
        let gone = retired
            .iter()
            .chain(&old)
            .map(|m| self.remove(&m.info.id, m.name()));
        futures_util::future::join_all(gone).await;
        Ok(self.done(plan, &new))
    }

    /// Removes containers created ahead that will not start.
    async fn discard(&self, ready: &Ready) {
        for c in ready.values() {
            self.remove(&c.id, &c.name).await;
        }
    }

    fn done(&self, plan: &Plan<'_>, new: &[Member]) -> Outcome {
        self.emit(RolloutEvent::Done {
            revision: plan.spec.revision.clone(),
        });
        Outcome::Done {
            containers: new.iter().map(|m| m.name().to_owned()).collect(),
        }
    }

    /// Whether a failure stops where it is: `failure_action: pause`, unless aborted.
    fn pauses(&self, plan: &Plan<'_>) -> bool {
        plan.spec.update.failure_action == FailureAction::Pause && !self.control.asked().aborted
    }

    /// A rolling rollout failed: pause, or put the old containers back (starting the
    /// stopped ones again) and remove the new.
    async fn failed(
        &self,
        plan: &Plan<'_>,
        reason: String,
        old: Vec<Member>,
        new: Vec<Member>,
        retired: Vec<Member>,
    ) -> Outcome {
        let spec = plan.spec;
        if self.pauses(plan) {
            return self.end(true, reason);
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
            match self.gate(plan, &m.info, &again, false).await {
                Ok(again) => back.push(again),
                Err(why) => {
                    self.emit(RolloutEvent::ContainerFailed {
                        container: m.name().to_owned(),
                        reason: why,
                    });
                    self.remove(&m.info.id, m.name()).await;
                }
            }
        }
        if !new.is_empty() && back.is_empty() {
            // Nothing of the old revision could come back: the new one keeps serving.
            tracing::warn!(service = %spec.name, "rollback found no old container to serve");
            return self.end(false, reason);
        }
        self.revert(plan, "current", &back, &new, reason).await
    }

    /// All traffic on `old` (as the set `set_name`), then `new` drained and removed.
    async fn revert(
        &self,
        plan: &Plan<'_>,
        set_name: &str,
        old: &[Member],
        new: &[Member],
        reason: String,
    ) -> Outcome {
        let live = self.live_backends(new);
        self.publish(plan, vec![self.set(set_name, old, 1)]);
        self.wait_drained(live, plan.spec.update.drain_timeout)
            .await;
        for m in new {
            self.stop(plan, m).await;
            self.remove(&m.info.id, m.name()).await;
        }
        self.end(false, reason)
    }

    /// Says how a failed rollout ended: `paused` (what serves keeps serving) or rolled back.
    fn end(&self, paused: bool, reason: String) -> Outcome {
        if paused {
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

    /// Blue-green or canary: the new set failed before it got any traffic.
    fn not_started(&self, plan: &Plan<'_>, reason: String) -> Outcome {
        self.end(self.pauses(plan), reason)
    }

    /// Blue-green or canary after the new set got traffic: pause (the new set serving),
    /// or everything back on `old` and the new set removed.
    async fn serving_failed(
        &self,
        plan: &Plan<'_>,
        set_name: &str,
        old: &[Member],
        new: &[Member],
        reason: String,
    ) -> Outcome {
        if self.pauses(plan) {
            return self.end(true, reason);
        }
        self.revert(plan, set_name, old, new, reason).await
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

    /// The whole new set, started and gated in one batch, then held at a checkpoint (a
    /// person may pause before the switch); the reason it went no further otherwise.
    async fn start_all(&self, plan: &Plan<'_>, old: &[Member]) -> Result<Vec<Member>, String> {
        let spec = plan.spec;
        self.checkpoint().await?;
        self.emit(RolloutEvent::BatchStarted {
            batch: 1,
            new: spec.replicas as usize,
            retiring: old.len(),
        });
        let (new, _) = self
            .start_batch(plan, 1, spec.replicas, Ready::new(), None, &[])
            .await?;
        if let Err(reason) = self.checkpoint().await {
            for m in &new {
                self.remove(&m.info.id, m.name()).await;
            }
            return Err(reason);
        }
        Ok(new)
    }

    async fn blue_green(
        &self,
        plan: &Plan<'_>,
        old: Vec<Member>,
        keep_old: Duration,
    ) -> Result<Outcome, RolloutError> {
        let spec = plan.spec;
        let new = match self.start_all(plan, &old).await {
            Ok(new) => new,
            Err(reason) => return Ok(self.not_started(plan, reason)),
        };
        let live = self.live_backends(&old);
        // The switch: one swap of the route's backends.
        self.publish(plan, vec![self.set(&spec.revision, &new, 1)]);
        let keep_until = Instant::now() + keep_old;
        if let Err(reason) = self.bake(plan, &new, !old.is_empty()).await {
            return Ok(self
                .serving_failed(plan, "current", &old, &new, reason)
                .await);
        }
        self.finish_old(plan, &old, live, keep_until).await;
        Ok(self.done(plan, &new))
    }

    async fn canary(
        &self,
        plan: &Plan<'_>,
        old: Vec<Member>,
        steps: &[CanaryStep],
    ) -> Result<Outcome, RolloutError> {
        let spec = plan.spec;
        let new = match self.start_all(plan, &old).await {
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
            // The bake's threshold watches the steps too.
            let watch = self.error_watch(plan, &new);
            for step in steps {
                if self.control.asked().promoted {
                    break;
                }
                let w = step.weight.min(100);
                self.publish(
                    plan,
                    vec![
                        self.set(old_name, &old, 100 - w),
                        self.set(&spec.revision, &new, w),
                    ],
                );
                if let Err(reason) = self.hold(plan, &new, step.pause, watch.as_ref()).await {
                    return Ok(self
                        .serving_failed(plan, old_name, &old, &new, reason)
                        .await);
                }
            }
        }
        if self.control.asked().promoted {
            self.emit(RolloutEvent::Promoted);
        }
        // Promote.
        let live = self.live_backends(&old);
        self.publish(plan, vec![self.set(&spec.revision, &new, 1)]);
        if let Err(reason) = self.bake(plan, &new, !old.is_empty()).await {
            return Ok(self
                .serving_failed(plan, old_name, &old, &new, reason)
                .await);
        }
        self.finish_old(plan, &old, live, Instant::now()).await;
        Ok(self.done(plan, &new))
    }
}

/// The 5xx share of a new revision's requests since a reading, against a threshold.
struct ErrorWatch {
    key: RouteKey,
    addresses: Vec<Address>,
    start: StatusCounts,
    max_rate: f64,
    min_requests: u64,
}

impl ErrorWatch {
    fn read(proxy: &Proxy, key: &RouteKey, addresses: &[Address]) -> StatusCounts {
        addresses
            .iter()
            .map(|a| proxy.backend_counts(key, a))
            .fold(StatusCounts::default(), |sum, c| sum + c)
    }

    fn check(&self, proxy: &Proxy) -> Result<(), String> {
        let seen = ErrorWatch::read(proxy, &self.key, &self.addresses).since(self.start);
        if seen.total >= self.min_requests.max(1)
            && seen.server_errors as f64 > self.max_rate * seen.total as f64
        {
            return Err(format!(
                "{:.1}% of its requests answered 5xx ({} of {}), over the {:.1}% allowed",
                100.0 * seen.server_errors as f64 / seen.total as f64,
                seen.server_errors,
                seen.total,
                100.0 * self.max_rate
            ));
        }
        Ok(())
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
