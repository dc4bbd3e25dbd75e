//! Pipeline-level scheduling, limits and plan validation; exec pipelines keep these fast.

use std::time::Duration;

use slipway_engine::{EngineError, Event, Status};
use slipway_spec::plan::{PipelineType, RunOn};

use crate::support::*;

#[tokio::test]
async fn pipelines_follow_their_dependencies_and_status_conditions() -> TestResult {
    let work = tempfile::tempdir()?;
    let first = exec_pipeline("first", vec![step("boom", &["exit 1"])]);
    let mut needs_success = exec_pipeline("needs-success", vec![step("s", &["true"])]);
    needs_success.depends_on = vec!["first".into()];
    let mut on_failure = exec_pipeline("on-failure", vec![step("notify", &["echo notify"])]);
    on_failure.depends_on = vec!["first".into()];
    on_failure.run_on = RunOn {
        success: false,
        failure: true,
    };
    let independent = exec_pipeline("independent", vec![step("i", &["true"])]);
    let mut skipped = exec_pipeline("skipped", vec![step("x", &["true"])]);
    skipped.skipped = true;
    let (report, events) = run(
        &plan(vec![first, needs_success, on_failure, independent, skipped]),
        options(work.path()),
    )
    .await?;

    let status = |name: &str| {
        report
            .pipelines
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.status)
    };
    assert_eq!(status("first"), Some(Status::Failure));
    assert_eq!(status("needs-success"), Some(Status::Skipped));
    assert_eq!(status("on-failure"), Some(Status::Success));
    assert_eq!(status("independent"), Some(Status::Success));
    assert_eq!(status("skipped"), Some(Status::Skipped));
    assert_eq!(report.status, Status::Failure);
    assert!(events.logs("notify").iter().any(|l| l == "notify"));
    // `on-failure` only started after `first` finished.
    let first_end = events
        .position(|e| matches!(e, Event::PipelineFinished { pipeline, .. } if pipeline == "first"));
    let notify_start = events
        .position(|e| matches!(e, Event::PipelineStarted { pipeline } if pipeline == "on-failure"));
    assert!(first_end < notify_start);
    Ok(())
}

#[tokio::test]
async fn plan_skipped_steps_count_as_done() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut skipped = step("skipped", &["exit 1"]);
    skipped.skipped = true;
    let p = exec_pipeline(
        "p",
        vec![skipped, after(step("next", &["echo ran"]), &["skipped"])],
    );
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;
    assert_eq!(report.status, Status::Success);
    assert_eq!(step_report(&report, "p", "skipped").status, Status::Skipped);
    assert!(events.logs("next").iter().any(|l| l == "ran"));
    Ok(())
}

#[tokio::test]
async fn unsupported_pipeline_type_is_an_error() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut vm = exec_pipeline("vm", vec![step("s", &["true"])]);
    vm.kind = PipelineType::Other("vm".into());
    let (report, _) = run(&plan(vec![vm]), options(work.path())).await?;
    assert_eq!(report.status, Status::Error);
    let error = report.pipelines[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("pipeline type `vm` cannot run locally"),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn pipeline_timeout_kills_running_steps() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut p = exec_pipeline("slow", vec![step("sleep", &["sleep 30"])]);
    p.timeout_secs = Some(1);
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;
    assert_eq!(report.status, Status::Killed);
    assert_eq!(step_report(&report, "slow", "sleep").status, Status::Killed);
    assert!(
        events
            .logs("sleep")
            .iter()
            .any(|l| l == "pipeline timed out after 1s")
    );
    Ok(())
}

#[tokio::test]
async fn build_timeout_and_default_step_timeout_apply() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    options.build_timeout = Some(Duration::from_secs(1));
    let p = exec_pipeline("slow", vec![step("sleep", &["sleep 30"])]);
    let (report, events) = run(&plan(vec![p.clone()]), options).await?;
    assert_eq!(report.status, Status::Killed);
    assert!(
        events
            .logs("sleep")
            .iter()
            .any(|l| l == "build timed out after 1s")
    );

    let mut options = crate::support::options(work.path());
    options.default_step_timeout = Some(Duration::from_secs(1));
    let (report, events) = run(&plan(vec![p]), options).await?;
    assert_eq!(step_report(&report, "slow", "sleep").status, Status::Killed);
    assert!(
        events
            .logs("sleep")
            .iter()
            .any(|l| l == "step timed out after 1s")
    );
    Ok(())
}

#[tokio::test]
async fn invalid_plans_are_refused_before_running() -> TestResult {
    let work = tempfile::tempdir()?;
    let p = exec_pipeline(
        "cycle",
        vec![
            after(step("a", &["true"]), &["b"]),
            after(step("b", &["true"]), &["a"]),
        ],
    );
    match run(&plan(vec![p]), options(work.path())).await {
        Err(EngineError::InvalidPlan(message)) => {
            assert!(message.contains("cycle"), "{message}")
        }
        other => panic!("expected InvalidPlan, got {other:?}"),
    }
    let p = exec_pipeline("unknown", vec![after(step("a", &["true"]), &["nope"])]);
    assert!(matches!(
        run(&plan(vec![p]), options(work.path())).await,
        Err(EngineError::InvalidPlan(_))
    ));
    Ok(())
}
