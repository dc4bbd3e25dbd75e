//! Steering rollouts: the bake's automatic revert on the new revision's error rate, and a
//! person's pause, resume, promote and abort ([`Control`]), on the real engine behind the
//! real proxy.

use std::time::{Duration, Instant};

use crate::docker_env::{Env, Events, Load, edge, wait_for};
use slipway_deploy::rollout::{
    Bake, CanaryStep, Command, Control, Outcome, Rollout, RolloutEvent, ServiceSpec, Strategy,
};
use slipway_deploy::target::Target;

/// Answers `$VERSION` from a CGI script, and 500 to every fifth request of a container.
fn failing_every_fifth(mut spec: ServiceSpec) -> ServiceSpec {
    let cgi = "#!/bin/sh\n\
               n=$(( $(cat /tmp/n 2>/dev/null || echo 0) + 1 )); echo $n > /tmp/n\n\
               if [ $((n % 5)) -eq 0 ]; then printf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nboom\\n'; \
               else printf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$VERSION\"; fi\n";
    // No index.html: busybox httpd runs /cgi-bin/index.cgi for `/`.
    let script = "mkdir -p /www/cgi-bin /tmp && echo \"$CGI\" > /www/cgi-bin/index.cgi && \
                  chmod +x /www/cgi-bin/index.cgi; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait";
    spec.template.command = Some(vec!["sh".into(), "-c".into(), script.into()]);
    spec.template.env.insert("CGI".into(), cgi.into());
    spec
}

/// A rollout of `env`'s services behind `edge`, its events collected, steered by the
/// control returned.
fn steered<'a, T: Target>(
    env: &'a Env<T>,
    edge: &'a crate::docker_env::Edge,
) -> (Rollout<'a, T>, Events, Control) {
    let events = Events::default();
    let control = Control::default();
    let rollout = Rollout::new(&env.target, &edge.proxy)
        .on_event(events.sink())
        .with_control(control.clone());
    (rollout, events, control)
}

/// Waits (30 s at most) for an event `f` accepts.
async fn until(events: &Events, what: &str, f: impl Fn(&RolloutEvent) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if events.count(&f) > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no {what} event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has(events: &Events, f: impl Fn(&RolloutEvent) -> bool) -> bool {
    events.count(f) > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_answering_500_to_a_fifth_of_requests_is_reverted_during_its_bake() {
    let Some(env) = Env::new("bake").await else {
        return;
    };
    bake_scenario(&env).await;
}

/// The bake scenario on any target (the swarm's test runs it too).
pub async fn bake_scenario<T: Target>(env: &Env<T>) {
    let e = edge().await;
    let (rollout, events, _) = steered(env, &e);
    let host = env.host("web");
    let first = rollout
        .run(&env.service("web", "1", "v1", 2))
        .await
        .expect("deploy v1");
    assert!(matches!(first, Outcome::Done { .. }), "{first:?}");
    wait_for(e.addr, &host, "v1").await;

    let mut v2 = failing_every_fifth(env.service("web", "2", "v2", 2));
    let bake = Bake {
        window: Duration::from_secs(30),
        max_error_rate: 0.05,
        min_requests: 20,
    };
    v2.bake = Some(bake.clone());
    let load = Load::start(e.addr, &host, 2, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    let outcome = rollout.run(&v2).await.expect("deploy v2");
    let took = began.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.stop().await;
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("5xx")),
        "{outcome:?}"
    );
    assert!(
        took < bake.window,
        "the bake ran its whole window ({took:?})"
    );
    assert!(has(&events, |e| matches!(
        e,
        RolloutEvent::BakeStarted { .. }
    )));
    assert!(!has(&events, |e| matches!(
        e,
        RolloutEvent::BakePassed { .. }
    )));

    // Every answer came; v1 answered 200s only, v2 its 200s and 500s.
    assert!(
        seen.errors.is_empty(),
        "connection errors: {:?}",
        seen.errors
    );
    let answers = seen.timeline();
    for (_, status, body) in &answers {
        assert!(
            matches!((status, *body), (200, "v1") | (200, "v2") | (500, "boom")),
            "unexpected answer {status} {body}"
        );
    }
    // When the share of v2's answers that were 500s first crossed the threshold, as the
    // load client saw them, and the last answer v2 gave.
    let (mut total, mut failed, mut crossed, mut last_v2) = (0u64, 0u64, None, None);
    for (t, status, body) in &answers {
        if *body == "v1" {
            continue;
        }
        total += 1;
        failed += u64::from(*status == 500);
        last_v2 = Some(*t);
        if crossed.is_none()
            && total >= bake.min_requests
            && failed as f64 > bake.max_error_rate * total as f64
        {
            crossed = Some(*t);
        }
    }
    let (crossed, last_v2) = (
        crossed.expect("v2's error rate crossed the threshold"),
        last_v2.expect("v2 answered"),
    );
    let after = last_v2.saturating_duration_since(crossed);
    eprintln!(
        "v2: {failed} of {total} answers were 500; its last came {after:?} after the threshold"
    );
    assert!(
        after <= Duration::from_secs(2),
        "v2 still answered {after:?} after its error rate crossed the threshold"
    );
    let tail: Vec<&str> = answers.iter().rev().take(20).map(|(_, _, b)| *b).collect();
    assert!(
        tail.iter().all(|b| *b == "v1"),
        "after the revert: {tail:?}"
    );
    assert_eq!(env.revisions_running("web").await, ["1:Running"; 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_paused_resumed_and_promoted_and_the_next_one_aborted() {
    let Some(env) = Env::new("steer").await else {
        return;
    };
    let e = edge().await;
    let host = env.host("web");
    let first = Rollout::new(&env.target, &e.proxy)
        .run(&env.service("web", "1", "v1", 2))
        .await
        .expect("deploy v1");
    assert!(matches!(first, Outcome::Done { .. }), "{first:?}");
    wait_for(e.addr, &host, "v1").await;
    let canary = |revision: &str, version: &str| {
        let mut s = env.service("web", revision, version, 2);
        s.strategy = Strategy::Canary {
            steps: vec![
                CanaryStep {
                    weight: 10,
                    pause: Duration::from_secs(60),
                },
                CanaryStep {
                    weight: 50,
                    pause: Duration::from_secs(60),
                },
            ],
        };
        s
    };
    let at_ten = |e: &RolloutEvent| {
        matches!(
            e,
            RolloutEvent::TrafficShifted {
                new_weight: Some(10),
                ..
            }
        )
    };

    // Paused at 10%: it holds there past the step's clock; resumed, then promoted.
    let (rollout, events, control) = steered(&env, &e);
    let v2 = canary("2", "v2");
    let steer = async {
        until(&events, "10% shift", at_ten).await;
        control.send(Command::Pause);
        until(&events, "held", |e| matches!(e, RolloutEvent::Held)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let shifts = events.count(|e| matches!(e, RolloutEvent::TrafficShifted { .. }));
        control.send(Command::Resume);
        until(&events, "resumed", |e| matches!(e, RolloutEvent::Resumed)).await;
        control.send(Command::Promote);
        shifts
    };
    let began = Instant::now();
    let (outcome, shifts_while_held) = tokio::join!(rollout.run(&v2), steer);
    let outcome = outcome.expect("deploy v2");
    assert!(matches!(outcome, Outcome::Done { .. }), "{outcome:?}");
    assert!(
        began.elapsed() < Duration::from_secs(50),
        "a promote did not skip the 60 s steps"
    );
    let steps = events.take();
    let shifted = |w: u32| {
        steps.iter().any(|e| {
            matches!(e, RolloutEvent::TrafficShifted { new_weight, .. } if *new_weight == Some(w))
        })
    };
    assert!(shifted(10), "{steps:#?}");
    // Held at 10: the 50% step came after the resume, if at all, never while held.
    let held_at = steps
        .iter()
        .position(|e| matches!(e, RolloutEvent::Held))
        .expect("held");
    let resumed_at = steps
        .iter()
        .position(|e| matches!(e, RolloutEvent::Resumed))
        .expect("resumed");
    assert!(
        !steps[held_at..resumed_at].iter().any(
            |e| matches!(e, RolloutEvent::TrafficShifted { new_weight, .. } if *new_weight == Some(50))
        ),
        "{steps:#?}"
    );
    assert!(shifts_while_held >= 1);
    assert!(
        steps.iter().any(|e| matches!(e, RolloutEvent::Promoted)),
        "{steps:#?}"
    );
    assert!(matches!(steps.last(), Some(RolloutEvent::Done { .. })));
    wait_for(e.addr, &host, "v2").await;
    assert_eq!(env.revisions_running("web").await, ["2:Running"; 2]);

    // Aborted at 10%: everything back on v2, v3 removed.
    let (rollout, events, control) = steered(&env, &e);
    let v3 = canary("3", "v3");
    let steer = async {
        until(&events, "10% shift", at_ten).await;
        control.send(Command::Abort);
    };
    let (outcome, ()) = tokio::join!(rollout.run(&v3), steer);
    let outcome = outcome.expect("deploy v3");
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("aborted")),
        "{outcome:?}"
    );
    wait_for(e.addr, &host, "v2").await;
    assert_eq!(env.revisions_running("web").await, ["2:Running"; 2]);

    // A rolling one aborted during its delay between batches: the drained v2 container
    // (stopped only while the next batch starts) serves again, v4 goes.
    let (rollout, events, control) = steered(&env, &e);
    let mut v4 = env.service("web", "4", "v4", 2);
    v4.update.delay = Duration::from_secs(60);
    let steer = async {
        until(&events, "first drain", |e| {
            matches!(e, RolloutEvent::Drained { .. })
        })
        .await;
        control.send(Command::Abort);
    };
    let (outcome, ()) = tokio::join!(rollout.run(&v4), steer);
    let outcome = outcome.expect("deploy v4");
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("aborted")),
        "{outcome:?}"
    );
    assert!(has(&events, |e| matches!(
        e,
        RolloutEvent::Restarted { .. }
    )));
    wait_for(e.addr, &host, "v2").await;
    assert_eq!(env.revisions_running("web").await, ["2:Running"; 2]);
}
