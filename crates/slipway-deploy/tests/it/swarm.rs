//! The deployer's load scenarios on a single-node Docker Swarm ([`SwarmTarget`]: one
//! one-task service per container, reached at its `host`-mode published port): the same
//! scenario code as on one engine ([`crate::rollout`], [`crate::steer`]), the same
//! assertions (0 failed requests, 0 connection errors, the slow request and the WebSocket
//! drained). Each test holds the swarm lock ([`crate::docker_env::SwarmMode`]) and makes
//! and leaves its own swarm; it skips, saying why, when swarm mode cannot be had.

use slipway_deploy::target::{SwarmTarget, TargetError};

use crate::docker_env::{Env, SWARM_LOCK, docker};

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

    // What is left (revision 2's four services) says what the spec holds: the image
    // pinned (the test image was never in a registry: its id), Swarm never rolling back by
    // itself, Slipway's labels on the service and on its task's container, the service
    // port published in host mode.
    let label = format!("label=io.slipway.env={}", env.env);
    let ids = docker(&["service", "ls", "-q", "--filter", &label]).expect("service ls");
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", &env.image]).expect("image id");
    for service in ids {
        let spec = docker(&[
            "service",
            "inspect",
            "-f",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}} {{.Spec.UpdateConfig.FailureAction}} \
             {{.Spec.RollbackConfig.FailureAction}} {{index .Spec.Labels \"io.slipway.revision\"}} \
             {{index .Spec.TaskTemplate.ContainerSpec.Labels \"io.slipway.env\"}} \
             {{range .Spec.EndpointSpec.Ports}}{{.TargetPort}}/{{.PublishMode}}{{end}} \
             {{.Spec.Mode.Replicated.Replicas}}",
            service,
        ])
        .expect("service inspect");
        assert_eq!(
            spec.split_whitespace().collect::<Vec<_>>(),
            [
                id.as_str(),
                "continue",
                "continue",
                "2",
                &env.env,
                "8080/host",
                "1"
            ],
            "{spec}"
        );
    }
}

/// An engine that is no swarm manager is refused with what to do about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_target_on_an_engine_outside_any_swarm_says_to_init_one() {
    if docker(&["version"]).is_err() {
        eprintln!("skipped: no Docker engine");
        return;
    }
    // Under the lock, no test's swarm is up.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(SWARM_LOCK)
        .expect("the swarm lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("lock");
    let state = docker(&["info", "-f", "{{.Swarm.LocalNodeState}}"]).expect("info");
    if state != "inactive" {
        eprintln!("skipped: the engine is in a swarm ({state})");
        return;
    }
    match SwarmTarget::connect().await {
        Err(e @ TargetError::NotSwarmManager { .. }) => {
            let text = e.to_string();
            assert!(text.contains("docker swarm init"), "{text}");
            assert!(text.contains("inactive"), "{text}");
        }
        other => panic!("{other:?}"),
    }
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
