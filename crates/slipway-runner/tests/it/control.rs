//! The server in charge: cancelling, taking the lease away, refusing the token, arriving
//! late.

use std::time::{Duration, Instant};

use slipway_engine::Status;
use slipway_runner::RunnerError;
use slipway_runner::protocol::{StageEvent, WorkspaceSpec};

use crate::fake::{self, Script, summary};
use crate::proxy::Proxy;
use crate::support::{config, init_tracing, lease, plan, start_runner};

#[tokio::test]
async fn cancel_in_a_heartbeat_answer_kills_the_stage() {
    let (fake, addr) = fake::start(Script {
        heartbeat_secs: 1,
        cancel_when_started: Some("wait".into()),
        ..Script::default()
    })
    .await;
    fake.push_lease(lease(
        plan(&[("wait", &["echo waiting", "sleep 60"])], false),
        WorkspaceSpec::Empty,
    ));
    let started = Instant::now();
    let runner = start_runner(addr);
    let done = fake.wait_done(Duration::from_secs(50)).await;
    let took = started.elapsed();
    runner.stop().await.expect("the runner stops cleanly");

    assert_eq!(done.status, Status::Killed, "{}", summary(&fake.record()));
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let record = fake.record();
    assert!(record.heartbeats >= 1);
    assert!(
        record.steps.iter().any(|e| matches!(
            e,
            StageEvent::StepFinished { step, status: Status::Killed, .. } if step == "wait"
        )),
        "{}",
        summary(&record)
    );
    drop(record);
    assert!(fake.lines("wait").contains(&"waiting".to_string()));
}

#[tokio::test]
async fn lease_lost_stops_the_stage_without_done() {
    let (fake, addr) = fake::start(Script {
        heartbeat_secs: 1,
        lease_lost_from: Some(2),
        ..Script::default()
    })
    .await;
    fake.push_lease(lease(
        plan(
            &[("forever", &["while true; do echo tick; sleep 0.2; done"])],
            false,
        ),
        WorkspaceSpec::Empty,
    ));
    let started = Instant::now();
    let runner = start_runner(addr);
    fake.wait_for("the 409", Duration::from_secs(60), |r| {
        r.requests.iter().any(|q| q.status.as_u16() == 409)
    })
    .await;
    // Once the stage is over, the runner's only poll loop polls again.
    let polls = fake.record().polls;
    fake.wait_for("the next poll", Duration::from_secs(30), |r| {
        r.polls > polls
    })
    .await;
    let took = started.elapsed();
    // Give a /done that should not come a chance to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    runner.stop().await.expect("the runner stops cleanly");

    let record = fake.record();
    assert!(record.done.is_empty(), "{}", summary(&record));
    let conflicts = record
        .requests
        .iter()
        .filter(|q| q.status.as_u16() == 409)
        .count();
    assert_eq!(
        conflicts,
        1,
        "no events after the lease was lost: {}",
        summary(&record)
    );
    assert!(took < Duration::from_secs(40), "took {took:?}");
}

#[tokio::test]
async fn a_refused_token_stops_the_runner_with_a_clear_error() {
    init_tracing();
    let (fake, addr) = fake::start(Script::default()).await;
    let work = tempfile::tempdir().expect("work root");
    let mut config = config(addr, work.path());
    config.token = "wrong".into();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        slipway_runner::run(config, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the runner gives up at once");
    match result {
        Err(RunnerError::Unauthorized { url, message }) => {
            assert_eq!(url, format!("http://{addr}/api/runner/register"));
            assert_eq!(message, "bad runner token");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert!(fake.record().registrations.is_empty());
}

#[tokio::test]
async fn registration_waits_for_the_server_and_shutdown_stops_polling() {
    let (fake, upstream) = fake::start(Script::default()).await;
    let proxy = Proxy::start(upstream).await;
    proxy.set_down(true);
    let runner = start_runner(proxy.addr);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(fake.record().registrations.is_empty());
    proxy.set_down(false);
    fake.wait_for("a poll", Duration::from_secs(20), |r| r.polls > 0)
        .await;
    assert_eq!(fake.record().registrations.len(), 1);
    let stopping = Instant::now();
    runner.stop().await.expect("the runner stops cleanly");
    assert!(stopping.elapsed() < Duration::from_secs(5));
}
