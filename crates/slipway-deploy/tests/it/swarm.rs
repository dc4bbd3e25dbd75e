//! The deployer's load scenarios on a single-node Docker Swarm ([`SwarmTarget`]: one
//! one-task service per container, reached at its `host`-mode published port): the same
//! scenario code as on one engine ([`crate::rollout`], [`crate::steer`]), the same
//! assertions (0 failed requests, 0 connection errors, the slow request and the WebSocket
//! drained). Each test holds the swarm lock ([`crate::docker_env::SwarmMode`]) and makes
//! and leaves its own swarm; it skips, saying why, when swarm mode cannot be had.

use slipway_deploy::target::SwarmTarget;

use crate::docker_env::Env;

async fn swarm_env(test: &str) -> Option<Env<SwarmTarget>> {
    Env::swarm(test).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_rolling_4_replicas_under_load_fails_nothing_and_a_v3_that_never_gets_healthy_rolls_back()
 {
    let Some(env) = swarm_env("sw-rolling").await else {
        return;
    };
    crate::rollout::rolling_scenario(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_blue_green_4_replicas_switches_at_once_under_load_gated_by_the_health_check() {
    let Some(env) = swarm_env("sw-bluegreen").await else {
        return;
    };
    crate::rollout::blue_green_scenario(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_canary_4_replicas_steps_10_50_100_under_load() {
    let Some(env) = swarm_env("sw-canary").await else {
        return;
    };
    crate::rollout::canary_scenario(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_a_version_answering_500_to_a_fifth_of_requests_is_reverted_during_its_bake() {
    let Some(env) = swarm_env("sw-bake").await else {
        return;
    };
    crate::steer::bake_scenario(&env).await;
}
