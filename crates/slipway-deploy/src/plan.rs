//! What a stack file means in an environment, before anything runs: [`Plan::of`] turns a
//! read [`Compose`] and an [`Environment`] into one [`ServicePlan`] per service, in file
//! order — image, replicas, command, environment (values from secrets hidden), ports,
//! routes, health checks, volumes, networks, dependencies and the rollout strategy.
//! `slipway stack plan --json` prints it; the schema is in the README
//! (`slipway stack plan --json`) and only grows.
//!
//! Where routes come from:
//! - the environment's domain: `SERVICE.DOMAIN` when the service has `x-slipway.route`
//!   or exposes/publishes exactly one HTTP port (ports of well-known other protocols,
//!   such as 5432 or 443, do not count), plain HTTP unless the route asks for `tls: acme`;
//! - its labels and environment, through the proxy's readers ([`slipway_proxy::labels`]:
//!   Slipway, Traefik v1/v2/v3, nginx-proxy's `VIRTUAL_HOST`).
//!
//! Health checks: the compose `healthcheck`, the Rancher probe, or both; a service with
//! neither gets a TCP check on its route's port (or its single exposed port) and a
//! warning. The strategy is rolling, start-first, one at a time unless `x-slipway`,
//! `deploy.update_config` or Rancher's `upgrade_strategy` say otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use slipway_proxy::labels::{PublishedPort, Workload, WorkloadKind};
use slipway_proxy::{Tls, route::RouteSource};

use crate::compose::NOT_HTTP_PORTS;
use crate::compose::{
    CanaryStep, Command, Compose, Condition, FailureAction, FileRef, HealthTest, Network, Order,
    Port, PortRange, Resources, RestartPolicy, SecretDef, Service, ServiceVolume, Strategy,
    UpdateConfig, Volume, serialize_opt_duration,
};

/// The plan's schema version: bumped only if a field changes meaning.
pub const SCHEMA: u32 = 1;

/// Where a stack is planned: its name, domain and variables.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub name: String,
    /// Services get `SERVICE.DOMAIN` routes when set.
    pub domain: Option<String>,
    pub variables: BTreeMap<String, String>,
    /// Variables whose values are secrets: usable in interpolation, never printed.
    pub secrets: BTreeMap<String, String>,
}

impl Environment {
    pub fn named(name: impl Into<String>) -> Self {
        Environment {
            name: name.into(),
            ..Environment::default()
        }
    }

    /// The variables interpolation sees: plain ones, then secrets over them.
    pub fn interpolation_vars(&self) -> BTreeMap<String, String> {
        let mut v = self.variables.clone();
        v.extend(self.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        v
    }
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub schema: u32,
    pub file: String,
    pub environment: String,
    pub domain: Option<String>,
    pub services: Vec<ServicePlan>,
    /// Declared networks, and `default` when a service uses it.
    pub networks: Vec<Network>,
    pub volumes: Vec<Volume>,
    pub secrets: Vec<SecretDef>,
    pub configs: Vec<SecretDef>,
    /// What the plan assumed or could not use (routes' label problems, missing checks).
    pub warnings: Vec<String>,
}

/// An environment value: the value, or, when it came from a secret, only the secrets'
/// names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EnvValue {
    Plain(String),
    Secret {
        secret: Vec<String>,
    },
    /// Written without a value and not set: Compose leaves such a variable out.
    Unset {
        unset: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanRoute {
    pub host: String,
    pub path: Option<String>,
    pub port: u16,
    /// `acme`, `none`, or an uploaded certificate's name.
    pub tls: String,
    /// `domain`, `x-slipway`, or `labels` (with `origin`: the label or variable).
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// One health check of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthPlan {
    /// `compose` (its `healthcheck`), `rancher` (`health_check`), `default` (assumed).
    pub source: String,
    /// `command`, `http` or `tcp`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<HealthTest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub interval: Option<Duration>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub timeout: Option<Duration>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub start_period: Option<Duration>,
    /// Compose `retries`; for probes, the unhealthy threshold.
    pub retries: Option<u32>,
    pub healthy_threshold: Option<u32>,
}

/// How a new revision replaces the old one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategyPlan {
    pub kind: Strategy,
    pub order: Order,
    pub parallelism: u32,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub delay: Option<Duration>,
    pub failure_action: FailureAction,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub monitor: Option<Duration>,
    pub max_failure_ratio: Option<f64>,
    pub steps: Vec<CanaryStep>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub bake: Option<Duration>,
    pub max_error_rate: Option<f64>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub keep_old: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkPlan {
    pub name: String,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DependencyPlan {
    pub service: String,
    pub condition: Condition,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumePlan {
    #[serde(flatten)]
    pub volume: ServiceVolume,
    /// A host path: refused for untrusted stacks.
    pub bind: bool,
}

/// One service of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct ServicePlan {
    pub name: String,
    pub image: Option<String>,
    /// `replicated` or `global`.
    pub mode: String,
    /// `None` for `global` (one a node).
    pub replicas: Option<u32>,
    pub command: Option<Command>,
    pub entrypoint: Option<Command>,
    pub environment: BTreeMap<String, EnvValue>,
    pub ports: Vec<Port>,
    pub expose: Vec<PortRange>,
    pub routes: Vec<PlanRoute>,
    pub health_checks: Vec<HealthPlan>,
    pub volumes: Vec<VolumePlan>,
    pub networks: Vec<NetworkPlan>,
    pub depends_on: Vec<DependencyPlan>,
    pub strategy: StrategyPlan,
    pub update_config: Option<UpdateConfig>,
    pub rollback_config: Option<UpdateConfig>,
    pub restart: Option<String>,
    pub restart_policy: Option<RestartPolicy>,
    pub resources: Option<Resources>,
    pub placement: Option<serde_json::Value>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub stop_grace_period: Option<Duration>,
    pub stop_signal: Option<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub deploy_labels: BTreeMap<String, String>,
    pub secrets: Vec<FileRef>,
    pub configs: Vec<FileRef>,
    /// Set: the service starts only when one of its profiles is asked for.
    pub profiles: Vec<String>,
    pub extensions: BTreeMap<String, serde_json::Value>,
}

impl Plan {
    /// The plan of a stack read with the environment's variables (see
    /// [`Environment::interpolation_vars`]). Problems of the file are the reader's; this
    /// adds only warnings.
    pub fn of(compose: &Compose, env: &Environment) -> Plan {
        let mut warnings = Vec::new();
        let label_routes = label_routes(compose, &mut warnings);
        let secret_names: BTreeSet<&str> = env.secrets.keys().map(String::as_str).collect();
        // Legacy links: aliases of the linked service.
        let mut link_aliases: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for s in &compose.services {
            for l in &s.links {
                if l.alias != l.service {
                    link_aliases
                        .entry(l.service.as_str())
                        .or_default()
                        .push(l.alias.clone());
                }
            }
        }
        let mut uses_default = false;
        let services = compose
            .services
            .iter()
            .map(|s| {
                let aliases = link_aliases
                    .get(s.name.as_str())
                    .cloned()
                    .unwrap_or_default();
                if s.networks.is_empty() {
                    uses_default = true;
                }
                service_plan(
                    s,
                    env,
                    &secret_names,
                    label_routes
                        .get(s.name.as_str())
                        .cloned()
                        .unwrap_or_default(),
                    aliases,
                    &mut warnings,
                )
            })
            .collect();
        let mut networks = compose.networks.clone();
        if uses_default && !networks.iter().any(|n| n.name == "default") {
            networks.insert(
                0,
                Network {
                    name: "default".to_owned(),
                    ..Network::default()
                },
            );
        }
        Plan {
            schema: SCHEMA,
            file: compose.file.clone(),
            environment: env.name.clone(),
            domain: env.domain.clone(),
            services,
            networks,
            volumes: compose.volumes.clone(),
            secrets: compose.secrets.clone(),
            configs: compose.configs.clone(),
            warnings,
        }
    }

    pub fn service(&self, name: &str) -> Option<&ServicePlan> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// TCP target ports of a service (ports and expose), without repeats, in order.
fn tcp_ports(s: &Service) -> Vec<u16> {
    let mut seen = BTreeSet::new();
    s.ports
        .iter()
        .filter(|p| p.protocol == "tcp")
        .flat_map(|p| p.target.ports())
        .chain(s.expose.iter().flat_map(PortRange::ports))
        .filter(|p| seen.insert(*p))
        .collect()
}

fn http_ports(s: &Service) -> Vec<u16> {
    tcp_ports(s)
        .into_iter()
        .filter(|p| !NOT_HTTP_PORTS.contains(p))
        .collect()
}

fn workload(s: &Service) -> Workload {
    let mut labels = s.labels.clone();
    labels.extend(s.deploy.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut published_ports = Vec::new();
    for p in s.ports.iter().filter(|p| p.protocol == "tcp") {
        if let Some(pb) = p.published
            && pb.len() == p.target.len()
        {
            for (t, pb) in p.target.ports().zip(pb.ports()) {
                published_ports.push(PublishedPort {
                    target: t,
                    published: pb,
                    host_ip: p.host_ip.clone(),
                });
            }
        }
    }
    Workload {
        name: s.name.clone(),
        kind: WorkloadKind::Service,
        labels,
        environment: s
            .environment
            .iter()
            .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
            .collect(),
        exposed_ports: tcp_ports(s),
        published_ports,
        addresses: Vec::new(),
        task_addresses: None,
    }
}

/// Routes the services' labels and environments say, by service.
fn label_routes(compose: &Compose, warnings: &mut Vec<String>) -> BTreeMap<String, Vec<PlanRoute>> {
    let workloads: Vec<Workload> = compose.services.iter().map(workload).collect();
    let (set, diags) = slipway_proxy::labels::read_all(&workloads);
    for d in diags {
        warnings.push(d.to_string());
    }
    let mut out: BTreeMap<String, Vec<PlanRoute>> = BTreeMap::new();
    for r in set.routes {
        let RouteSource::Labels { container } = &r.source else {
            continue;
        };
        let service = container.strip_prefix("service ").unwrap_or(container);
        let port = r
            .backends()
            .next()
            .and_then(|b| b.address.as_str().rsplit(':').next()?.parse::<u16>().ok())
            .unwrap_or(80);
        out.entry(service.to_owned()).or_default().push(PlanRoute {
            host: r.key.host.as_str().to_owned(),
            path: r.key.path.clone(),
            port,
            tls: tls_name(&r.tls),
            source: "labels".to_owned(),
            origin: r.origin.clone(),
        });
    }
    out
}

fn tls_name(t: &Tls) -> String {
    match t {
        Tls::Acme => "acme".to_owned(),
        Tls::Off => "none".to_owned(),
        Tls::Certificate(name) => name.clone(),
    }
}

fn service_plan(
    s: &Service,
    env: &Environment,
    secret_names: &BTreeSet<&str>,
    mut routes: Vec<PlanRoute>,
    link_aliases: Vec<String>,
    warnings: &mut Vec<String>,
) -> ServicePlan {
    let global = s.deploy.mode.as_deref() == Some("global");
    let environment = s
        .environment
        .iter()
        .map(|e| {
            let secrets: Vec<String> = e
                .from_vars
                .iter()
                .filter(|v| secret_names.contains(v.as_str()))
                .cloned()
                .collect();
            let v = if !secrets.is_empty() {
                EnvValue::Secret { secret: secrets }
            } else {
                match &e.value {
                    Some(v) => EnvValue::Plain(v.clone()),
                    None => EnvValue::Unset { unset: true },
                }
            };
            (e.name.clone(), v)
        })
        .collect();

    // The route the environment's domain gives.
    let http = http_ports(s);
    let x_route = s.slipway.as_ref().and_then(|x| x.route.as_ref());
    if x_route.is_some() || (http.len() == 1 && env.domain.is_some()) {
        let host = x_route
            .and_then(|r| r.host.clone())
            .or_else(|| env.domain.as_ref().map(|d| format!("{}.{d}", s.name)));
        let port = x_route
            .and_then(|r| r.port)
            .or_else(|| http.first().copied());
        match (host, port) {
            (Some(host), Some(port)) => routes.insert(
                0,
                PlanRoute {
                    host,
                    path: x_route.and_then(|r| r.path.clone()).filter(|p| p != "/"),
                    port,
                    // ACME only when the route asks: a domain route may be a name no
                    // public CA can prove (`*.localhost`, an internal domain).
                    tls: if x_route.and_then(|r| r.tls) == Some(true) {
                        "acme".to_owned()
                    } else {
                        "none".to_owned()
                    },
                    source: if x_route.is_some() { "x-slipway" } else { "domain" }.to_owned(),
                    origin: None,
                },
            ),
            (None, _) => warnings.push(format!(
                "service `{}`: `x-slipway.route` has no `host` and the environment has no domain: no route",
                s.name
            )),
            (_, None) => warnings.push(format!(
                "service `{}`: `x-slipway.route` has no `port` and the service exposes no single HTTP port: no route",
                s.name
            )),
        }
    }

    let mut health_checks = Vec::new();
    if let Some(h) = &s.healthcheck
        && let Some(test) = &h.test
    {
        health_checks.push(HealthPlan {
            source: "compose".to_owned(),
            kind: "command".to_owned(),
            command: Some(test.clone()),
            port: None,
            method: None,
            path: None,
            // Docker's defaults.
            interval: Some(h.interval.unwrap_or(Duration::from_secs(30))),
            timeout: Some(h.timeout.unwrap_or(Duration::from_secs(30))),
            start_period: Some(h.start_period.unwrap_or(Duration::ZERO)),
            retries: Some(h.retries.unwrap_or(3)),
            healthy_threshold: None,
        });
    }
    if let Some(p) = &s.probe {
        health_checks.push(HealthPlan {
            source: "rancher".to_owned(),
            kind: if p.http.is_some() { "http" } else { "tcp" }.to_owned(),
            command: None,
            port: Some(p.port),
            method: p.http.as_ref().map(|h| h.method.clone()),
            path: p.http.as_ref().map(|h| h.path.clone()),
            interval: Some(p.interval),
            timeout: Some(p.timeout),
            start_period: p.initializing_timeout,
            retries: Some(p.unhealthy_threshold),
            healthy_threshold: Some(p.healthy_threshold),
        });
    }
    if health_checks.is_empty() {
        let disabled = s.healthcheck.as_ref().is_some_and(|h| h.test.is_none());
        let port = routes.first().map(|r| r.port).or_else(|| {
            let t = tcp_ports(s);
            (t.len() == 1).then(|| t[0])
        });
        match port {
            Some(port) if !disabled => {
                warnings.push(format!(
                    "service `{}` has no health check: a TCP check on port {port} is assumed",
                    s.name
                ));
                health_checks.push(HealthPlan {
                    source: "default".to_owned(),
                    kind: "tcp".to_owned(),
                    command: None,
                    port: Some(port),
                    method: None,
                    path: None,
                    interval: Some(Duration::from_secs(10)),
                    timeout: Some(Duration::from_secs(5)),
                    start_period: None,
                    retries: Some(3),
                    healthy_threshold: Some(1),
                });
            }
            _ if disabled => warnings.push(format!(
                "service `{}`: its health check is disabled: a container counts as healthy once it runs",
                s.name
            )),
            _ => warnings.push(format!(
                "service `{}` has no health check and no single port to check: a container counts as healthy once it runs",
                s.name
            )),
        }
    }

    let uc = s.deploy.update_config.clone().unwrap_or_default();
    let x = s.slipway.clone().unwrap_or_default();
    let strategy = StrategyPlan {
        kind: x.strategy.unwrap_or_default(),
        order: uc.order.unwrap_or(Order::StartFirst),
        parallelism: uc.parallelism.filter(|p| *p > 0).unwrap_or(1),
        delay: uc.delay,
        failure_action: uc.failure_action.unwrap_or(FailureAction::Rollback),
        monitor: uc.monitor,
        max_failure_ratio: uc.max_failure_ratio,
        steps: if x.strategy == Some(Strategy::Canary) {
            x.steps.clone()
        } else {
            Vec::new()
        },
        bake: x.bake,
        max_error_rate: x.max_error_rate,
        keep_old: x.keep_old,
    };

    let mut networks: Vec<NetworkPlan> = if s.networks.is_empty() {
        vec![NetworkPlan {
            name: "default".to_owned(),
            aliases: Vec::new(),
        }]
    } else {
        s.networks
            .iter()
            .map(|n| NetworkPlan {
                name: n.name.clone(),
                aliases: n.aliases.clone(),
            })
            .collect()
    };
    for n in &mut networks {
        for a in &link_aliases {
            if !n.aliases.contains(a) {
                n.aliases.push(a.clone());
            }
        }
    }

    ServicePlan {
        name: s.name.clone(),
        image: s.image.clone(),
        mode: if global { "global" } else { "replicated" }.to_owned(),
        replicas: if global {
            None
        } else {
            Some(s.deploy.replicas.unwrap_or(1))
        },
        command: s.command.clone(),
        entrypoint: s.entrypoint.clone(),
        environment,
        ports: s.ports.clone(),
        expose: s.expose.clone(),
        routes,
        health_checks,
        volumes: s
            .volumes
            .iter()
            .map(|v| VolumePlan {
                bind: v.is_bind(),
                volume: v.clone(),
            })
            .collect(),
        networks,
        depends_on: s
            .depends_on
            .iter()
            .map(|d| DependencyPlan {
                service: d.service.clone(),
                condition: d.condition,
            })
            .collect(),
        strategy,
        update_config: s.deploy.update_config.clone(),
        rollback_config: s.deploy.rollback_config.clone(),
        restart: s.restart.clone(),
        restart_policy: s.deploy.restart_policy.clone(),
        resources: s.deploy.resources.clone(),
        placement: s.deploy.placement.clone(),
        stop_grace_period: s.stop_grace_period,
        stop_signal: s.stop_signal.clone(),
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        labels: s.labels.clone(),
        deploy_labels: s.deploy.labels.clone(),
        secrets: s.secrets.clone(),
        configs: s.configs.clone(),
        profiles: s.profiles.clone(),
        extensions: s.extensions.clone(),
    }
}
