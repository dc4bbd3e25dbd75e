//! A whole stack at one revision: its compose file and plan turned into one
//! [`ServiceSpec`] per service ([`service_specs`]), and deployed service by service in
//! dependency order ([`deploy_stack`]).
//!
//! Invariants:
//! - **One revision at a time**: a service that does not become healthy stops the stack's
//!   deploy; the services this revision already replaced are put back to the previous
//!   revision's specs (when there is one), so the stack never ends half on one revision and
//!   half on another.
//! - A successful deploy leaves only the file's services: one the file no longer has is
//!   taken off its route, drained and removed.
//! - Names the engine sees are the stack's own: the network `slipway-ENV-STACK[-NET]`,
//!   named volumes `slipway-ENV-STACK-VOL` (an `external` one by its name), so two stacks
//!   or environments never share an object by accident.
//! - Bind mounts and `external` networks and volumes are refused unless the caller allows
//!   them (trusted stacks only).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use slipway_proxy::Proxy;

use crate::compose::{self, Command, Compose, HealthTest, VolumeKind};
use crate::plan::Plan;
use crate::rollout::{
    Bake, CanaryStep, Control, FailureAction, HealthGate, Outcome, Probe, Rollout, RolloutError,
    RolloutEvent, RouteSpec, ServiceSpec, Strategy, UpdateConfig, UpdateOrder,
};
use crate::target::{
    ContainerSpec, Healthcheck, MountKind, MountSpec, NetworkAttachment, Placement, Resources,
    RestartPolicy, Selector, Target,
};
use crate::target::{LABEL_LOGS_JSON, LABEL_LOGS_MULTILINE, LABEL_LOGS_MULTILINE_TIMEOUT};

/// Why a stack cannot be turned into services.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    #[error("service `{service}`: {reason}")]
    Service { service: String, reason: String },
    #[error("services depend on each other in a cycle: {0}")]
    Cycle(String),
}

fn service_error(service: &str, reason: impl Into<String>) -> StackError {
    StackError::Service {
        service: service.to_owned(),
        reason: reason.into(),
    }
}

/// The engine's name of a stack's network (`default` is the stack's own).
pub fn network_name(env: &str, stack: &str, network: &str, compose: &Compose) -> String {
    match compose.networks.iter().find(|n| n.name == network) {
        Some(n) if n.external => n.engine_name.clone().unwrap_or_else(|| n.name.clone()),
        _ if network == "default" => format!("slipway-{env}-{stack}"),
        _ => format!("slipway-{env}-{stack}-{network}"),
    }
}

fn volume_name(env: &str, stack: &str, volume: &str, compose: &Compose) -> String {
    match compose.volumes.iter().find(|v| v.name == volume) {
        Some(v) if v.external => v.engine_name.clone().unwrap_or_else(|| v.name.clone()),
        _ => format!("slipway-{env}-{stack}-{volume}"),
    }
}

/// A shell-like split of a command string, as Compose does it (quotes group, `\` escapes).
pub fn split_command(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn command(c: &Command) -> Vec<String> {
    match c {
        Command::Shell(text) => split_command(text),
        Command::Exec(list) => list.clone(),
    }
}

/// The services of `compose` at `revision`, in the order they deploy (dependencies
/// first). `images` pins a service's image (`image@digest`), else the file's is used.
pub fn service_specs(
    compose: &Compose,
    plan: &Plan,
    env: &str,
    stack: &str,
    revision: &str,
    images: &BTreeMap<String, String>,
    allow_bind_mounts: bool,
) -> Result<Vec<ServiceSpec>, StackError> {
    let order = deploy_order(compose)?;
    if !allow_bind_mounts {
        // Joining a network or mounting a volume the stack did not create reaches into
        // what others run: like a host path, only for trusted stacks.
        let external = compose
            .networks
            .iter()
            .filter(|n| n.external)
            .map(|n| format!("network `{}`", n.name))
            .chain(
                compose
                    .volumes
                    .iter()
                    .filter(|v| v.external)
                    .map(|v| format!("volume `{}`", v.name)),
            )
            .next();
        if let Some(what) = external {
            return Err(StackError::Service {
                service: "(stack)".to_owned(),
                reason: format!(
                    "the external {what}: only trusted stacks may use objects they did not create"
                ),
            });
        }
    }
    let mut specs = Vec::new();
    for name in order {
        let (Some(service), Some(planned)) = (compose.service(&name), plan.service(&name)) else {
            continue;
        };
        if !service.profiles.is_empty() {
            continue;
        }
        let image = images
            .get(&name)
            .cloned()
            .or_else(|| service.image.clone())
            .ok_or_else(|| service_error(&name, "has no `image` (images come from pipelines)"))?;
        let networks: Vec<NetworkAttachment> = if service.networks.is_empty() {
            vec![NetworkAttachment {
                name: network_name(env, stack, "default", compose),
                aliases: vec![name.clone()],
            }]
        } else {
            service
                .networks
                .iter()
                .map(|n| {
                    let mut aliases = n.aliases.clone();
                    aliases.insert(0, name.clone());
                    NetworkAttachment {
                        name: network_name(env, stack, &n.name, compose),
                        aliases,
                    }
                })
                .collect()
        };
        let mut mounts = Vec::new();
        for v in &service.volumes {
            let kind = match v.kind {
                VolumeKind::Volume => MountKind::Volume,
                VolumeKind::Bind if allow_bind_mounts => MountKind::Bind,
                VolumeKind::Bind => {
                    return Err(service_error(
                        &name,
                        format!(
                            "bind mount `{}` of a host path: only trusted stacks may mount host paths",
                            v.source.as_deref().unwrap_or("?")
                        ),
                    ));
                }
                VolumeKind::Tmpfs => MountKind::Tmpfs,
                other => {
                    return Err(service_error(
                        &name,
                        format!("volume type `{other:?}` is not supported here"),
                    ));
                }
            };
            let source = match (kind, &v.source) {
                (MountKind::Volume, Some(source)) => volume_name(env, stack, source, compose),
                (MountKind::Volume, None) => String::new(),
                (_, source) => source.clone().unwrap_or_default(),
            };
            mounts.push(MountSpec {
                kind,
                source,
                target: v.target.clone(),
                read_only: v.read_only,
            });
        }
        let healthcheck = service.healthcheck.as_ref().and_then(|h| {
            let test = if h.disable {
                vec!["NONE".to_owned()]
            } else {
                match h.test.as_ref()? {
                    HealthTest::Cmd(args) => {
                        let mut test = vec!["CMD".to_owned()];
                        test.extend(args.iter().cloned());
                        test
                    }
                    HealthTest::CmdShell(text) => vec!["CMD-SHELL".to_owned(), text.clone()],
                }
            };
            Some(Healthcheck {
                test,
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
                start_period: h.start_period,
            })
        });
        let restart = match service
            .deploy
            .restart_policy
            .as_ref()
            .and_then(|p| p.condition.as_deref())
            .or(service.restart.as_deref())
        {
            Some("no" | "none") => RestartPolicy::No,
            Some("always" | "any") => RestartPolicy::Always,
            Some(s) if s.starts_with("on-failure") => RestartPolicy::OnFailure {
                max_retries: s.split_once(':').and_then(|(_, n)| n.parse().ok()),
            },
            _ => RestartPolicy::UnlessStopped,
        };
        let limits = service
            .deploy
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref());
        let reservations = service
            .deploy
            .resources
            .as_ref()
            .and_then(|r| r.reservations.as_ref());
        let resources = Resources {
            memory_bytes: limits
                .and_then(|l| l.memory)
                .and_then(|m| i64::try_from(m).ok()),
            nano_cpus: limits
                .and_then(|l| l.cpus)
                .map(|c| (c * 1_000_000_000.0) as i64),
            pids_limit: limits.and_then(|l| l.pids),
            reserve_memory_bytes: reservations
                .and_then(|r| r.memory)
                .and_then(|m| i64::try_from(m).ok()),
            reserve_nano_cpus: reservations
                .and_then(|r| r.cpus)
                .map(|c| (c * 1_000_000_000.0) as i64),
        };
        let placement = placement(service.deploy.placement.as_ref());
        let mut labels = service.labels.clone();
        labels.extend(service.deploy.labels.clone());
        if let Some(logs) = service.slipway.as_ref().and_then(|x| x.logs.as_ref()) {
            labels.extend(log_labels(logs));
        }
        let env_vars: BTreeMap<String, String> = service
            .environment
            .iter()
            .filter_map(|v| v.value.clone().map(|value| (v.name.clone(), value)))
            .collect();
        let route = planned.routes.first();
        let port = route.map(|r| r.port).or_else(|| {
            service
                .ports
                .iter()
                .filter(|p| p.protocol == "tcp")
                .map(|p| p.target.start)
                .chain(service.expose.iter().map(|e| e.start))
                .next()
        });
        let Some(port) = port else {
            return Err(service_error(
                &name,
                "has no TCP port (`expose`, `ports` or a route): the deployer health-checks and routes services by one",
            ));
        };
        let probe = planned
            .health_checks
            .iter()
            .find(|h| h.source == "rancher")
            .map(|h| match h.kind.as_str() {
                "http" => Probe::Http {
                    path: h.path.clone().unwrap_or_else(|| "/".to_owned()),
                    status: None,
                },
                _ => Probe::Tcp,
            });
        let rancher = planned.health_checks.iter().find(|h| h.source == "rancher");
        let mut health = HealthGate {
            docker: healthcheck.as_ref().is_some_and(|h| h.test != ["NONE"]),
            probe,
            ..HealthGate::default()
        };
        if let Some(r) = rancher {
            if let Some(n) = r.healthy_threshold {
                health.successes = n.max(1);
            }
            if let Some(i) = r.interval {
                health.interval = i;
            }
            if let Some(t) = r.timeout {
                health.probe_timeout = t;
            }
        }
        if let Some(start) = healthcheck.as_ref().and_then(|h| h.start_period) {
            health.timeout = health.timeout.max(start + Duration::from_secs(30));
        }
        let s = &planned.strategy;
        let update = UpdateConfig {
            parallelism: s.parallelism.max(1),
            order: match s.order {
                compose::Order::StartFirst => UpdateOrder::StartFirst,
                compose::Order::StopFirst => UpdateOrder::StopFirst,
            },
            delay: s.delay.unwrap_or_default(),
            failure_action: match s.failure_action {
                compose::FailureAction::Pause => FailureAction::Pause,
                _ => FailureAction::Rollback,
            },
            ..UpdateConfig::default()
        };
        let strategy = match s.kind {
            compose::Strategy::Rolling => Strategy::Rolling,
            compose::Strategy::BlueGreen => Strategy::BlueGreen {
                keep_old: s.keep_old.unwrap_or_default(),
            },
            compose::Strategy::Canary => Strategy::Canary {
                steps: s
                    .steps
                    .iter()
                    .map(|c| CanaryStep {
                        weight: c.weight,
                        pause: c.pause.unwrap_or_default(),
                    })
                    .collect(),
            },
        };
        let network = networks.first().map(|n| n.name.clone()).unwrap_or_default();
        specs.push(ServiceSpec {
            env: env.to_owned(),
            stack: stack.to_owned(),
            name: name.clone(),
            revision: revision.to_owned(),
            image,
            replicas: planned.replicas.unwrap_or(1).max(1),
            template: ContainerSpec {
                command: service.command.as_ref().map(command),
                entrypoint: service.entrypoint.as_ref().map(command),
                env: env_vars,
                labels,
                networks,
                mounts,
                healthcheck,
                restart,
                stop_signal: service.stop_signal.clone(),
                stop_grace: service.stop_grace_period,
                user: service.user.clone(),
                working_dir: service.working_dir.clone(),
                resources,
                placement,
                ..ContainerSpec::default()
            },
            port,
            network,
            route: route.map(|r| RouteSpec {
                host: r.host.clone(),
                path: r.path.clone(),
                tls: (r.tls != "none").then(|| r.tls.clone()),
            }),
            health,
            update,
            strategy,
            pull: Default::default(),
            bake: s.bake.filter(|w| !w.is_zero()).map(|window| Bake {
                window,
                max_error_rate: s
                    .max_error_rate
                    .unwrap_or_else(Bake::default_max_error_rate),
                min_requests: Bake::default_min_requests(),
            }),
        });
    }
    Ok(specs)
}

/// `deploy.placement` as written (`constraints: [..]`, `preferences: [{spread: ..}]`).
fn placement(written: Option<&serde_json::Value>) -> Placement {
    let strings = |v: Option<&serde_json::Value>,
                   f: &dyn Fn(&serde_json::Value) -> Option<String>| {
        v.and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(f)
            .collect::<Vec<String>>()
    };
    Placement {
        constraints: strings(written.and_then(|p| p.get("constraints")), &|c| {
            c.as_str().map(str::to_owned)
        }),
        spread: strings(written.and_then(|p| p.get("preferences")), &|p| {
            p.get("spread").and_then(|s| s.as_str()).map(str::to_owned)
        }),
    }
}

/// Service names with every dependency before its dependents (file order otherwise).
fn deploy_order(compose: &Compose) -> Result<Vec<String>, StackError> {
    let names: BTreeSet<&str> = compose.services.iter().map(|s| s.name.as_str()).collect();
    let mut done: Vec<String> = Vec::new();
    let mut left: Vec<&compose::Service> = compose.services.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|s| {
            let ready = s
                .depends_on
                .iter()
                .filter(|d| names.contains(d.service.as_str()))
                .all(|d| done.contains(&d.service));
            if ready {
                done.push(s.name.clone());
            }
            !ready
        });
        if left.len() == before {
            let cycle: Vec<&str> = left.iter().map(|s| s.name.as_str()).collect();
            return Err(StackError::Cycle(cycle.join(", ")));
        }
    }
    Ok(done)
}

/// One event of a stack's deploy: which service, and what happened to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackEvent {
    pub service: String,
    #[serde(flatten)]
    pub event: RolloutEvent,
}

/// How a stack's deploy ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackOutcome {
    /// `succeeded`, `rolled_back` or `paused`.
    pub status: String,
    /// What went wrong, for the history.
    pub message: Option<String>,
    /// Each service's outcome, in deploy order.
    pub services: Vec<(String, Outcome)>,
}

/// Deploys `specs` in order; on the first service that does not become healthy, puts the
/// services already replaced back to `previous` (the last good revision's specs; a service
/// it did not have is removed) and says so. `sink` gets every event as it happens.
///
/// Every service's rollout obeys `control`; the put-back does not (it is the way back).
pub async fn deploy_stack<T: Target>(
    target: &T,
    proxy: &Proxy,
    specs: &[ServiceSpec],
    previous: Option<&[ServiceSpec]>,
    control: &Control,
    sink: impl Fn(&StackEvent) + Send + Sync + Clone + 'static,
) -> Result<StackOutcome, RolloutError> {
    let mut outcomes = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let service = spec.name.clone();
        let events = sink.clone();
        let run = Rollout::new(target, proxy)
            .with_control(control.clone())
            .on_event(move |event| {
                events(&StackEvent {
                    service: service.clone(),
                    event: event.clone(),
                })
            })
            .run(spec)
            .await;
        let outcome = match run {
            Ok(outcome) => outcome,
            Err(e) => {
                // The services already replaced go back before the error is told.
                if let Some(previous) = previous {
                    put_back(target, proxy, &specs[..index], previous, &sink).await;
                }
                return Err(e);
            }
        };
        match &outcome {
            Outcome::Done { .. } => outcomes.push((spec.name.clone(), outcome)),
            Outcome::RolledBack { reason } | Outcome::Paused { reason } => {
                let paused = matches!(outcome, Outcome::Paused { .. });
                let message = format!("service {}: {reason}", spec.name);
                outcomes.push((spec.name.clone(), outcome.clone()));
                if !paused && let Some(previous) = previous {
                    // The services of this revision already in place go back too.
                    put_back(target, proxy, &specs[..index], previous, &sink).await;
                }
                return Ok(StackOutcome {
                    status: if paused { "paused" } else { "rolled_back" }.to_owned(),
                    message: Some(message),
                    services: outcomes,
                });
            }
        }
    }
    // A service the file no longer has goes (drained) once the others serve.
    if let Some(first) = specs.first() {
        let running = target
            .list_containers(&Selector::stack(&first.env, &first.stack))
            .await?;
        let gone: BTreeSet<String> = running
            .iter()
            .filter_map(|c| c.owner())
            .map(|o| o.service)
            .filter(|s| !specs.iter().any(|spec| &spec.name == s))
            .collect();
        for service in gone {
            let drain = first.update.drain_timeout;
            Rollout::new(target, proxy)
                .remove_service(&first.env, &first.stack, &service, drain)
                .await?;
            tracing::info!(stack = %first.stack, %service, "removed: no longer in the stack file");
        }
    }
    Ok(StackOutcome {
        status: "succeeded".to_owned(),
        message: None,
        services: outcomes,
    })
}

/// Deploys the `previous` spec of each of `done` again; a failure is logged (the caller is
/// already reporting one).
async fn put_back<T: Target>(
    target: &T,
    proxy: &Proxy,
    done: &[ServiceSpec],
    previous: &[ServiceSpec],
    sink: &(impl Fn(&StackEvent) + Send + Sync + Clone + 'static),
) {
    for spec in done {
        let Some(old) = previous.iter().find(|p| p.name == spec.name) else {
            // New in the failed revision: nothing to put back, so it goes.
            let removed = Rollout::new(target, proxy)
                .remove_service(
                    &spec.env,
                    &spec.stack,
                    &spec.name,
                    spec.update.drain_timeout,
                )
                .await;
            if let Err(e) = removed {
                tracing::error!(service = %spec.name, "removing a service the previous revision did not have: {e}");
            }
            continue;
        };
        let service = old.name.clone();
        let events = sink.clone();
        let result = Rollout::new(target, proxy)
            .on_event(move |event| {
                events(&StackEvent {
                    service: service.clone(),
                    event: event.clone(),
                })
            })
            .run(old)
            .await;
        if let Err(e) = result {
            tracing::error!(service = %old.name, "putting the previous revision back: {e}");
        }
    }
}

/// A rollout strategy named by a pipeline step (`slipway/deploy`'s `strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyName {
    Rolling,
    BlueGreen,
    Canary,
}

impl StrategyName {
    /// `rolling`, `blue-green` (or `bluegreen`, `blue_green`) or `canary`.
    pub fn parse(text: &str) -> Option<StrategyName> {
        match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "rolling" => Some(StrategyName::Rolling),
            "blue-green" | "bluegreen" => Some(StrategyName::BlueGreen),
            "canary" => Some(StrategyName::Canary),
            _ => None,
        }
    }
}

/// What a deploy asks beyond its stack file, for this rollout only (the revision keeps
/// the file as written, so a rollback or recovery uses the file's own settings): a
/// pipeline step's `strategy`, or `peloton/drone-rancher`'s `batch_size`, `start_first`
/// and `timeout`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategyName>,
    /// Containers replaced at once (rolling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// `true`: start-first; `false`: stop-first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_first: Option<bool>,
    /// How long a new container has to pass its health gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_secs: Option<u64>,
    /// Only these services get the overrides; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

/// Canary steps when a step asks for `canary` and the file names none.
const DEFAULT_CANARY: [(u32, u64); 2] = [(10, 5), (50, 5)];

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self.strategy.is_none()
            && self.parallelism.is_none()
            && self.start_first.is_none()
            && self.health_timeout_secs.is_none()
    }

    /// Applies them to the services they name.
    pub fn apply(&self, specs: &mut [ServiceSpec]) {
        for spec in specs
            .iter_mut()
            .filter(|s| self.services.is_empty() || self.services.contains(&s.name))
        {
            if let Some(n) = self.parallelism {
                spec.update.parallelism = n.max(1);
            }
            if let Some(start_first) = self.start_first {
                spec.update.order = if start_first {
                    UpdateOrder::StartFirst
                } else {
                    UpdateOrder::StopFirst
                };
            }
            if let Some(secs) = self.health_timeout_secs {
                spec.health.timeout = Duration::from_secs(secs.max(1));
            }
            let keeps = match (self.strategy, &spec.strategy) {
                (None, _) => true,
                (Some(StrategyName::Rolling), Strategy::Rolling) => true,
                (Some(StrategyName::BlueGreen), Strategy::BlueGreen { .. }) => true,
                (Some(StrategyName::Canary), Strategy::Canary { steps }) => !steps.is_empty(),
                _ => false,
            };
            spec.strategy = match self.strategy {
                _ if keeps => continue,
                None | Some(StrategyName::Rolling) => Strategy::Rolling,
                Some(StrategyName::BlueGreen) => Strategy::BlueGreen {
                    keep_old: Duration::ZERO,
                },
                Some(StrategyName::Canary) => Strategy::Canary {
                    steps: DEFAULT_CANARY
                        .iter()
                        .map(|(weight, pause)| CanaryStep {
                            weight: *weight,
                            pause: Duration::from_secs(*pause),
                        })
                        .collect(),
                },
            };
        }
    }
}

/// One recorded rollout step (a [`StackEvent`] as JSON) as a line for people:
/// `web: container web-3-1 healthy at 172.18.0.5:80`. Shared by the CLI's `--wait` and a
/// pipeline's deploy step.
pub fn step_line(detail: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let d = detail;
    let service = text(&d["service"]);
    let what = match d["event"].as_str().unwrap_or_default() {
        "started" => format!(
            "{} rollout of revision {} ({} replicas, {} running before)",
            text(&d["strategy"]),
            text(&d["revision"]),
            d["replicas"],
            d["old"]
        ),
        "batch_started" => format!(
            "batch {}: {} new, {} retiring",
            d["batch"], d["new"], d["retiring"]
        ),
        "container_started" => format!("container {} started", text(&d["container"])),
        "container_healthy" => format!(
            "container {} healthy at {}",
            text(&d["container"]),
            text(&d["address"])
        ),
        "container_failed" => format!(
            "container {} failed: {}",
            text(&d["container"]),
            text(&d["reason"])
        ),
        "traffic_shifted" => match d["new_weight"].as_u64() {
            Some(w) => format!("traffic: {w}% to the new revision"),
            None => format!(
                "traffic to {}",
                d["backends"]
                    .as_array()
                    .map(|b| b.iter().map(text).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            ),
        },
        "drained" => format!(
            "{} drained{}",
            text(&d["container"]),
            if d["clean"] == true {
                ""
            } else {
                " (requests cut)"
            }
        ),
        "stopped" => format!("{} stopped", text(&d["container"])),
        "removed" => format!("{} removed", text(&d["container"])),
        "restarted" => format!("{} started again", text(&d["container"])),
        "done" => format!("revision {} serves", text(&d["revision"])),
        "rolled_back" => format!("rolled back: {}", text(&d["reason"])),
        "paused" => format!("paused: {}", text(&d["reason"])),
        other => other.to_owned(),
    };
    format!("{service}: {what}")
}

/// The labels that tell the log collector how to read a service (`x-slipway.logs`).
fn log_labels(logs: &compose::XLogs) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if let Some(start) = &logs.multiline {
        labels.insert(LABEL_LOGS_MULTILINE.to_owned(), start.clone());
    }
    if let Some(timeout) = logs.multiline_timeout {
        labels.insert(
            LABEL_LOGS_MULTILINE_TIMEOUT.to_owned(),
            humantime::format_duration(timeout).to_string(),
        );
    }
    if logs.json {
        labels.insert(LABEL_LOGS_JSON.to_owned(), "true".to_owned());
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::{ReadOptions, read};
    use crate::plan::Environment;

    fn specs(text: &str) -> Result<Vec<ServiceSpec>, StackError> {
        let r = read(text, "stack.yml", &ReadOptions::default());
        assert!(!r.has_errors(), "{:?}", r.problems);
        let mut env = Environment::named("production");
        env.domain = Some("example.com".into());
        let plan = Plan::of(&r.compose, &env);
        service_specs(
            &r.compose,
            &plan,
            "production",
            "shop",
            "3",
            &BTreeMap::new(),
            false,
        )
    }

    #[test]
    fn overrides_change_only_the_services_they_name() {
        let text = "services:\n  web:\n    image: shop/web:1\n    expose: [\"8080\"]\n  api:\n    image: shop/api:1\n    expose: [\"9000\"]\n";
        let mut specs = specs(text).expect("specs");
        Overrides {
            strategy: StrategyName::parse("Canary"),
            parallelism: Some(3),
            start_first: Some(false),
            health_timeout_secs: Some(7),
            services: vec!["web".to_owned()],
        }
        .apply(&mut specs);
        let web = specs.iter().find(|s| s.name == "web").expect("web");
        let api = specs.iter().find(|s| s.name == "api").expect("api");
        assert_eq!(web.update.parallelism, 3);
        assert_eq!(web.update.order, UpdateOrder::StopFirst);
        assert_eq!(web.health.timeout, Duration::from_secs(7));
        assert!(matches!(&web.strategy, Strategy::Canary { steps } if steps.len() == 2));
        assert_eq!(api.update.parallelism, 1);
        assert_eq!(api.strategy, Strategy::Rolling);
        assert_eq!(
            StrategyName::parse("blue_green"),
            Some(StrategyName::BlueGreen)
        );
        assert_eq!(StrategyName::parse("sideways"), None);
        let line =
            step_line(&serde_json::json!({"service": "web", "event": "done", "revision": "4"}));
        assert_eq!(line, "web: revision 4 serves");
    }

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            split_command(r#"httpd -f -p "8080" -h '/srv/my www' a\ b"#),
            ["httpd", "-f", "-p", "8080", "-h", "/srv/my www", "a b"]
        );
        assert!(split_command("   ").is_empty());
    }

    #[test]
    fn a_stack_becomes_services_in_dependency_order_with_its_own_names() {
        let text = "services:\n  web:\n    image: shop/web:1\n    depends_on: [api]\n    expose: [\"8080\"]\n    command: httpd -f -p 8080\n    environment:\n      MODE: prod\n    volumes:\n      - data:/data\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n    deploy:\n      replicas: 3\n      update_config:\n        parallelism: 2\n        order: stop-first\n  api:\n    image: shop/api:1\n    expose: [\"9000\"]\nvolumes:\n  data: {}\n";
        let specs = specs(text).expect("specs");
        assert_eq!(
            specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["api", "web"]
        );
        let web = &specs[1];
        assert_eq!(web.replicas, 3);
        assert_eq!(web.port, 8080);
        assert_eq!(web.network, "slipway-production-shop");
        assert_eq!(
            web.template.mounts[0].source,
            "slipway-production-shop-data"
        );
        assert_eq!(web.template.env["MODE"], "prod");
        assert_eq!(
            web.template.command.as_deref(),
            Some(&["httpd".to_owned(), "-f".into(), "-p".into(), "8080".into()][..])
        );
        assert_eq!(web.update.parallelism, 2);
        assert_eq!(web.update.order, UpdateOrder::StopFirst);
        assert!(web.health.docker);
        assert_eq!(
            web.route.as_ref().map(|r| r.host.as_str()),
            Some("web.example.com")
        );
        assert_eq!(web.revision, "3");
    }

    #[test]
    fn bind_mounts_cycles_and_portless_services_are_refused_with_the_service_named() {
        let bind = "services:\n  web:\n    image: a\n    expose: [\"80\"]\n    volumes:\n      - /etc:/host-etc\n";
        let err = specs(bind).expect_err("bind");
        assert!(err.to_string().contains("only trusted stacks"), "{err}");
        let cycle = "services:\n  a:\n    image: a\n    expose: [\"1\"]\n    depends_on: [b]\n  b:\n    image: b\n    expose: [\"1\"]\n    depends_on: [a]\n";
        assert!(matches!(specs(cycle), Err(StackError::Cycle(_))));
        let external = "services:\n  web:\n    image: a\n    expose: [\"80\"]\n    networks: [edge]\nnetworks:\n  edge:\n    external: true\n";
        let err = specs(external).expect_err("external");
        assert!(err.to_string().contains("external network `edge`"), "{err}");
        let portless = "services:\n  worker:\n    image: w\n";
        let err = specs(portless).expect_err("no port");
        assert!(err.to_string().contains("service `worker`"), "{err}");
    }
}
