//! The deployer: a compose file plus an environment becomes running containers behind the
//! edge proxy, one numbered revision at a time, with health-gated rollouts and automatic
//! rollback.
//!
//! Modules:
//! - [`compose`]: compose (and Rancher 1.x `rancher-compose.yml`) files read into owned
//!   types, every problem with its file, line and column; interpolation as Compose does it.
//! - [`plan`]: what a stack file means once read: services, images, replicas, ports,
//!   routes, health checks, volumes, networks and strategies (`slipway stack plan --json`).
//! - [`target`]: where containers run, as a trait ([`target::Target`]); the local Docker
//!   engine is the first implementation, Docker Swarm the next.
//! - [`rollout`]: a deploy as health-gated target swaps with drain (rolling, blue-green,
//!   canary), driving the proxy's backends directly.

pub mod compose;
pub mod plan;
pub mod rollout;
pub mod target;
