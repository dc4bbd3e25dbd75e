//! The deployer: a compose file plus an environment becomes running containers behind the
//! edge proxy, one numbered revision at a time, with health-gated rollouts and automatic
//! rollback.
//!
//! Modules:
//! - [`compose`]: compose (and Rancher 1.x `rancher-compose.yml`) files read into owned
//!   types, every problem with its file, line and column; interpolation as Compose does it.
//!   [`compose::read`] / [`compose::load`] give a [`compose::Read`] (a [`compose::Compose`]
//!   and its [`compose::Problem`]s, printed `FILE:LINE:COL: error|warning: message`);
//!   `build:` is refused, unknown keys are warnings, bind mounts are flagged, `x-slipway`
//!   is read; [`compose::read_rancher`] and [`compose::merge_rancher`] fold a Rancher 1.x
//!   `rancher-compose.yml` into the services.
//! - [`plan`]: what a stack file means once read: services, images, replicas, ports,
//!   routes, health checks, volumes, networks and strategies (`slipway stack plan --json`).
//!   [`plan::Plan::of`] takes a read compose file and a [`plan::Environment`] (name,
//!   domain, variables, secret variables whose values it never prints); routes come from
//!   the domain and, through `slipway-proxy`'s label readers, from Traefik and nginx-proxy
//!   labels; the JSON schema is documented in the README.
//! - [`target`]: where containers run, as a trait ([`target::Target`]: networks, volumes,
//!   containers from a [`target::ContainerSpec`], inspect, stop with grace, remove, list by
//!   [`target::Selector`], image pull and digest); the local Docker engine
//!   ([`target::DockerTarget`], bollard) and Docker Swarm ([`target::SwarmTarget`]: each
//!   container a one-task replicated service, reached at its `host`-mode published port,
//!   see [`target::swarm`]) implement it. Every object carries
//!   `io.slipway.{env,stack,service,revision}` labels ([`target::Owner`]), and nothing
//!   without them is ever listed, stopped or removed.
//! - [`rollout`]: a deploy of one [`rollout::ServiceSpec`] as health-gated target swaps with
//!   drain (rolling start-first or stop-first in batches, blue-green, canary weight steps),
//!   driving the proxy's backends directly (provider `deploy:ENV/STACK`), with a bake
//!   ([`rollout::Bake`]) that reverts on the new revision's 5xx share from the proxy's
//!   counts; a [`rollout::Control`] pauses, resumes, promotes or aborts it while it runs.
//!   Every step is a [`rollout::RolloutEvent`], the end an [`rollout::Outcome`] (done,
//!   rolled back, paused).
//! - [`stack`]: a whole stack at one revision: [`stack::service_specs`] turns a compose file
//!   and its plan into services in dependency order, [`stack::deploy_stack`] rolls them out
//!   one by one (one control for all) and, when a later one fails, puts the ones already
//!   replaced back and removes the ones the previous revision did not have.

pub mod compose;
pub mod plan;
pub mod rollout;
pub mod stack;
pub mod target;
