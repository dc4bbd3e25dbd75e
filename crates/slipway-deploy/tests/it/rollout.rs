//! Rollouts on the real engine behind the real proxy (on a loopback port, its routes set by
//! the rollout): busybox httpd services answering their version, deployed under a
//! continuous bounded load (keep-alive and fresh connections, and for the three strategies
//! one slow request and one WebSocket held open across their container's drain) that
//! records every answer, every message and every connection error.

use std::time::{Duration, Instant};

use slipway_deploy::rollout::{
    CanaryStep, FailureAction, Outcome, Probe, Rollout, RolloutEvent, Strategy, UpdateOrder,
};
use slipway_deploy::target::{Healthcheck, MountKind, MountSpec, Selector, Target};

use crate::docker_env::{Env, Events, Load, docker, edge, wait_for};

/// How many of `events` match `f`.
fn count(events: &[(Instant, RolloutEvent)], f: fn(&RolloutEvent) -> bool) -> usize {
    events.iter().filter(|(_, e)| f(e)).count()
}

/// Every old container drained in time (nothing cut).
fn assert_drains_clean(events: &[(Instant, RolloutEvent)], n: usize) {
    let drains: Vec<bool> = events
        .iter()
        .filter_map(|(_, e)| match e {
            RolloutEvent::Drained { clean, .. } => Some(*clean),
            _ => None,
        })
        .collect();
    assert_eq!(drains, vec![true; n], "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_4_replicas_under_load_with_a_slow_request_and_a_websocket_fails_nothing_and_a_v3_that_never_gets_healthy_rolls_back()
 {
    let Some(env) = Env::new("rolling").await else {
        return;
    };
    rolling_scenario(&env).await;
}

/// The rolling scenario on any target (the swarm's test runs it too).
pub async fn rolling_scenario<T: Target>(env: &Env<T>) {
    let e = edge().await;
    let events = Events::default();
    let rollout = Rollout::new(&env.target, &e.proxy).on_event(events.sink());
    let host = env.host("web");

    // The first deploy starts all four at once (nothing to replace).
    let mut v1 = env.service("web", "1", "v1", 4);
    v1.update.parallelism = 4;
    let first = rollout.run(&v1).await.expect("deploy v1");
    assert!(
        matches!(first, Outcome::Done { ref containers } if containers.len() == 4),
        "{first:?}"
    );
    wait_for(e.addr, &host, "v1").await;

    // v1 → v2, one container at a time, under load.
    let mut v2 = env.service("web", "2", "v2", 4);
    v2.update.delay = Duration::from_millis(300);
    let load = Load::start_with_long_lived(&e, env, &v2, 2, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    events.take();
    let second = rollout.run(&v2).await.expect("deploy v2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.stop().await;
    let steps = events.take_timed();
    assert!(matches!(second, Outcome::Done { .. }), "{second:?}");
    seen.assert_clean();
    seen.assert_switched("v1", "v2");
    seen.assert_long_lived_drained("v1", &steps);
    assert_eq!(
        count(&steps, |e| matches!(e, RolloutEvent::BatchStarted { .. })),
        4,
        "{steps:#?}"
    );
    assert_eq!(
        count(&steps, |e| matches!(
            e,
            RolloutEvent::ContainerHealthy { .. }
        )),
        4
    );
    assert_drains_clean(&steps, 4);
    assert_eq!(
        count(&steps, |e| matches!(e, RolloutEvent::Stopped { .. })),
        4
    );
    assert_eq!(
        count(&steps, |e| matches!(e, RolloutEvent::Removed { .. })),
        4
    );
    assert!(matches!(steps.last(), Some((_, RolloutEvent::Done { revision })) if revision == "2"));
    assert_eq!(env.revisions_running("web").await, ["2:Running"; 4]);

    // v3 never passes its gate (its probe path answers 404): no traffic, rolled back.
    let load = Load::start(e.addr, &host, 2, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut v3 = env.service("web", "3", "v3", 4);
    v3.health.probe = Some(Probe::Http {
        path: "/healthz".into(),
        status: None,
    });
    v3.health.timeout = Duration::from_secs(3);
    let third = rollout.run(&v3).await.expect("deploy v3");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = load.stop().await;
    assert!(
        matches!(third, Outcome::RolledBack { ref reason } if reason.contains("404")),
        "{third:?}"
    );
    seen.assert_clean();
    assert_eq!(
        seen.bodies.keys().collect::<Vec<_>>(),
        ["v2"],
        "v3 got traffic"
    );
    assert_eq!(env.revisions_running("web").await, ["2:Running"; 4]);
    let steps = events.take();
    assert!(
        steps
            .iter()
            .any(|e| matches!(e, RolloutEvent::ContainerFailed { .. })),
        "{steps:#?}"
    );
    assert!(matches!(
        steps.last(),
        Some(RolloutEvent::RolledBack { .. })
    ));
    wait_for(e.addr, &host, "v2").await;

    // With `pause`, a failing v3 stops there too, and v2 still serves alone.
    v3.update.failure_action = FailureAction::Pause;
    let paused = rollout.run(&v3).await.expect("deploy v3 again");
    assert!(matches!(paused, Outcome::Paused { .. }), "{paused:?}");
    assert_eq!(env.revisions_running("web").await, ["2:Running"; 4]);
    wait_for(e.addr, &host, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_4_replicas_switches_at_once_under_load_with_a_slow_request_and_a_websocket_gated_by_dockers_healthcheck()
 {
    let Some(env) = Env::new("bluegreen").await else {
        return;
    };
    blue_green_scenario(&env).await;
}

/// The blue-green scenario on any target (the swarm's test runs it too).
pub async fn blue_green_scenario<T: Target>(env: &Env<T>) {
    let e = edge().await;
    let events = Events::default();
    let rollout = Rollout::new(&env.target, &e.proxy).on_event(events.sink());
    let host = env.host("api");
    let spec = |revision: &str, version: &str| {
        let mut s = env.service("api", revision, version, 4);
        s.strategy = Strategy::BlueGreen {
            keep_old: Duration::from_secs(1),
        };
        // Only the engine's verdict gates it.
        s.health.probe = None;
        s.template.healthcheck = Some(Healthcheck {
            test: vec![
                "CMD".into(),
                "wget".into(),
                "-q".into(),
                "-O".into(),
                "/dev/null".into(),
                "http://127.0.0.1:8080/".into(),
            ],
            interval: Some(Duration::from_millis(300)),
            timeout: Some(Duration::from_secs(2)),
            retries: Some(3),
            start_period: None,
        });
        s
    };
    let first = rollout.run(&spec("1", "v1")).await.expect("deploy v1");
    assert!(matches!(first, Outcome::Done { .. }), "{first:?}");
    wait_for(e.addr, &host, "v1").await;

    let v2 = spec("2", "v2");
    let load = Load::start_with_long_lived(&e, env, &v2, 2, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    events.take();
    let second = rollout.run(&v2).await.expect("deploy v2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.stop().await;
    let steps = events.take_timed();
    assert!(matches!(second, Outcome::Done { .. }), "{second:?}");
    seen.assert_clean();
    seen.assert_switched("v1", "v2");
    seen.assert_long_lived_drained("v1", &steps);
    // One switch: after the first v2 answer, no v1.
    let first_v2 = seen.order.iter().position(|b| b == "v2").unwrap_or(0);
    let late_v1 = seen.order[first_v2..].iter().filter(|b| *b == "v1").count();
    // Requests already on their way to v1 at the switch may still finish there (one per
    // looping client at most).
    assert!(late_v1 <= 4, "{late_v1} v1 answers after the switch");
    assert_eq!(
        count(&steps, |e| matches!(e, RolloutEvent::TrafficShifted { .. })),
        1,
        "{steps:#?}"
    );
    assert_drains_clean(&steps, 4);
    assert_eq!(env.revisions_running("api").await, ["2:Running"; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_4_replicas_steps_10_50_100_under_load_with_a_slow_request_and_a_websocket() {
    let Some(env) = Env::new("canary").await else {
        return;
    };
    canary_scenario(&env).await;
}

/// The canary scenario on any target (the swarm's test runs it too).
pub async fn canary_scenario<T: Target>(env: &Env<T>) {
    let e = edge().await;
    let events = Events::default();
    let rollout = Rollout::new(&env.target, &e.proxy).on_event(events.sink());
    let host = env.host("shop");
    let mut v1 = env.service("shop", "1", "v1", 4);
    v1.update.parallelism = 4;
    let first = rollout.run(&v1).await.expect("deploy v1");
    assert!(matches!(first, Outcome::Done { .. }), "{first:?}");
    wait_for(e.addr, &host, "v1").await;

    // 10 and 50 are steps; promote is 100.
    let mut v2 = env.service("shop", "2", "v2", 4);
    v2.strategy = Strategy::Canary {
        steps: [10, 50]
            .map(|weight| CanaryStep {
                weight,
                pause: Duration::from_secs(1),
            })
            .to_vec(),
    };
    let load = Load::start_with_long_lived(&e, env, &v2, 2, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    events.take();
    // The route's sets, watched while the canary runs.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = tokio::spawn({
        let proxy = e.proxy.clone();
        let (env_name, stack) = (env.env.clone(), env.stack.clone());
        let watching = watching.clone();
        async move {
            let mut seen = Vec::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let sets =
                    slipway_deploy::rollout::route_backends(&proxy, &env_name, &stack, "shop");
                if seen.last() != Some(&sets) {
                    seen.push(sets);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        }
    });
    let second = rollout.run(&v2).await.expect("deploy v2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = Instant::now();
    let seen = load.stop().await;
    let steps = events.take_timed();
    assert!(matches!(second, Outcome::Done { .. }), "{second:?}");
    seen.assert_clean();
    seen.assert_switched("v1", "v2");
    seen.assert_long_lived_drained("v1", &steps);
    assert_drains_clean(&steps, 4);

    // The shares follow the weights: 10 %, 50 %, then 100 % (the promote, one set).
    let shifts: Vec<(Instant, Option<u32>)> = steps
        .iter()
        .filter_map(|(t, e)| match e {
            RolloutEvent::TrafficShifted { new_weight, .. } => Some((*t, *new_weight)),
            _ => None,
        })
        .collect();
    assert_eq!(
        shifts.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
        [Some(10), Some(50), None],
        "{steps:#?}"
    );
    // An answer that arrives this long after a shift was routed by it.
    let settle = Duration::from_millis(100);
    let window = |from: Instant, to: Instant| {
        let got = seen.bodies_between(from + settle, to);
        let v1 = got.get("v1").copied().unwrap_or(0);
        let v2 = got.get("v2").copied().unwrap_or(0);
        assert!(
            v1 + v2 >= 20,
            "too few answers between two shifts to see a share: {got:?}"
        );
        (v1, v2, v2 * 100 / (v1 + v2))
    };
    let at10 = window(shifts[0].0, shifts[1].0);
    let at50 = window(shifts[1].0, shifts[2].0);
    let at100 = window(shifts[2].0, end);
    eprintln!("canary (v1, v2, v2 %): 10: {at10:?}, 50: {at50:?}, 100: {at100:?}");
    // Round robin over the sets splits exactly; the bounds leave room for the edges.
    assert!(at10.1 > 0 && (2..=25).contains(&at10.2), "at 10: {at10:?}");
    assert!((30..=70).contains(&at50.2), "at 50: {at50:?}");
    // Only what was already on its way to v1 (one per looping client at most).
    assert!(at100.0 <= 4, "v1 after the promote: {at100:?}");

    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let history = watcher.await.expect("watcher");
    assert!(
        history
            .iter()
            .any(|sets| sets.keys().collect::<Vec<_>>() == ["2", "stable"]),
        "never both sets on the route: {history:?}"
    );
    assert_eq!(
        history
            .last()
            .map(|s| s.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["2".to_owned()])
    );
    assert_eq!(env.revisions_running("shop").await, ["2:Running"; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_service_touches_only_labelled_containers() {
    let Some(env) = Env::new("labels").await else {
        return;
    };
    let e = edge().await;
    let rollout = Rollout::new(&env.target, &e.proxy);
    let spec = env.service("db", "1", "v1", 1);
    let done = rollout.run(&spec).await.expect("deploy");
    assert!(matches!(done, Outcome::Done { .. }), "{done:?}");

    // A container Slipway did not make, on the same network.
    let stranger = format!("{}-stranger", env.env);
    if let Ok(mut n) = env.unlabelled.lock() {
        n.push(stranger.clone());
    }
    docker(&[
        "run",
        "-d",
        "--name",
        &stranger,
        "--network",
        &env.network,
        "--label",
        "io.slipway.env=forged-but-incomplete",
        &env.image,
        "sleep",
        "300",
    ])
    .expect("run the stranger");

    let all = env
        .target
        .list_containers(&Selector::env(&env.env))
        .await
        .expect("list");
    assert_eq!(all.len(), 1, "{all:?}");
    let refused = env.target.remove_container(&stranger).await;
    assert!(
        matches!(
            refused,
            Err(slipway_deploy::target::TargetError::NotOurs { .. })
        ),
        "{refused:?}"
    );
    assert!(
        env.target
            .stop_container(&stranger, Duration::from_secs(1))
            .await
            .is_err()
    );

    let removed = rollout
        .remove_service(&env.env, &env.stack, "db", Duration::from_secs(2))
        .await
        .expect("remove");
    assert_eq!(removed, 1);
    assert!(env.revisions_running("db").await.is_empty());
    let state = docker(&["inspect", "-f", "{{.State.Running}}", &stranger]).expect("inspect");
    assert_eq!(state, "true", "the unlabelled container was touched");
    assert!(e.proxy.providers().is_empty(), "{:?}", e.proxy.providers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_second_batch_rolls_back_by_restarting_the_stopped_old_containers() {
    let Some(env) = Env::new("rollback").await else {
        return;
    };
    let e = edge().await;
    let events = Events::default();
    let rollout = Rollout::new(&env.target, &e.proxy).on_event(events.sink());
    let host = env.host("cart");
    let first = rollout
        .run(&env.service("cart", "1", "v1", 2))
        .await
        .expect("deploy v1");
    assert!(matches!(first, Outcome::Done { .. }), "{first:?}");
    wait_for(e.addr, &host, "v1").await;

    // Only the first v2 container (the one that makes /shared/first) serves `/ok`.
    let mut v2 = env.service("cart", "2", "v2", 2);
    v2.template.mounts = vec![MountSpec {
        kind: MountKind::Volume,
        source: format!("{}-marker", env.env),
        target: "/shared".into(),
        read_only: false,
    }];
    v2.template.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "mkdir -p /www && echo \"$VERSION\" > /www/index.html; \
         if mkdir /shared/first 2>/dev/null; then echo ok > /www/ok; fi; \
         trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"
            .into(),
    ]);
    v2.health.probe = Some(Probe::Http {
        path: "/ok".into(),
        status: Some(200),
    });
    v2.health.timeout = Duration::from_secs(3);
    let load = Load::start(e.addr, &host, 2, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    events.take();
    let outcome = rollout.run(&v2).await.expect("deploy v2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.stop().await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    seen.assert_clean();
    assert!(
        seen.bodies.get("v2").is_some_and(|&n| n > 0),
        "batch 1 never served: {:?}",
        seen.bodies
    );
    assert_eq!(seen.order.last().map(String::as_str), Some("v1"));
    let steps = events.take();
    let restarted = steps
        .iter()
        .filter(|e| matches!(e, RolloutEvent::Restarted { .. }))
        .count();
    assert_eq!(restarted, 1, "{steps:#?}");
    assert!(matches!(
        steps.last(),
        Some(RolloutEvent::RolledBack { .. })
    ));
    assert_eq!(
        env.revisions_running("cart").await,
        ["1:Running", "1:Running"]
    );
    wait_for(e.addr, &host, "v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_stop_first_keeps_serving_from_the_other_replica() {
    let Some(env) = Env::new("stopfirst").await else {
        return;
    };
    let e = edge().await;
    let rollout = Rollout::new(&env.target, &e.proxy);
    let host = env.host("queue");
    let first = rollout
        .run(&env.service("queue", "1", "v1", 2))
        .await
        .expect("deploy v1");
    assert!(matches!(first, Outcome::Done { .. }), "{first:?}");
    wait_for(e.addr, &host, "v1").await;
    let mut v2 = env.service("queue", "2", "v2", 2);
    v2.update.order = UpdateOrder::StopFirst;
    let load = Load::start(e.addr, &host, 2, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = rollout.run(&v2).await.expect("deploy v2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = load.stop().await;
    assert!(matches!(second, Outcome::Done { .. }), "{second:?}");
    seen.assert_clean();
    seen.assert_switched("v1", "v2");
    assert_eq!(
        env.revisions_running("queue").await,
        ["2:Running", "2:Running"]
    );
}
