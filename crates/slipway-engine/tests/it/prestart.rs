//! Pre-started ("warm") step containers: started while their dependencies still run, held
//! at a gate, and either released when due or discarded without a trace.
//!
//! Each test watches the Docker engine while the build runs, to know that the step in
//! question really was pre-started (its container ran at the gate) and not just started
//! late, and then checks what the events show of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::ListContainersOptionsBuilder;
use slipway_engine::cleanup::{LABEL_OWNER, LABEL_PIPELINE, LABEL_STEP, current_owner};
use slipway_engine::{BuildReport, Event, RunOptions, Status};
use slipway_spec::plan::{Plan, RunOn, VolumeMount, VolumePlan, VolumeSource};

use crate::support::*;

/// A build that ran while its pre-started containers were watched.
struct Watched {
    report: BuildReport,
    events: Arc<Collector>,
    /// Steps seen pre-started (a running `-w` container), with the number of events the
    /// build had emitted when that was first seen.
    prestarted: BTreeMap<String, usize>,
}

/// What to do when a step is seen pre-started.
enum Then<'a> {
    Watch,
    /// Cancel the build when this step is seen pre-started.
    Cancel(&'a str),
    /// Kill this step's pre-started container (as if it had crashed) when it is seen.
    Kill(&'a str),
}

/// Runs `plan`, polling the engine for pre-started containers of pipeline `pipeline`.
async fn run_watching(
    plan: Plan,
    options: RunOptions,
    pipeline: &str,
    then: Then<'_>,
) -> Result<Watched, Box<dyn std::error::Error + Send + Sync>> {
    let docker = docker().await?;
    let cancel = options.cancel.clone();
    let events = Arc::new(Collector::default());
    let sink = events.clone();
    let handle = tokio::spawn(async move { slipway_engine::run(&plan, options, sink).await });

    let owner = format!("{LABEL_OWNER}={}", current_owner());
    let pipeline_label = format!("{LABEL_PIPELINE}={pipeline}");
    let filters = HashMap::from([("label", vec![owner.as_str(), pipeline_label.as_str()])]);
    let mut prestarted = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !handle.is_finished() {
        assert!(Instant::now() < deadline, "the build did not end");
        let seen = events.events().len();
        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        for container in containers {
            let warm = container
                .names
                .iter()
                .flatten()
                .any(|name| name.ends_with("-w"));
            let running =
                container.state.as_ref().map(ToString::to_string) == Some("running".into());
            let step = container
                .labels
                .as_ref()
                .and_then(|labels| labels.get(LABEL_STEP))
                .cloned();
            if let (true, true, Some(step), Some(id)) = (warm, running, step, &container.id) {
                match then {
                    Then::Cancel(name) if name == step => cancel.cancel(),
                    Then::Kill(name) if name == step && !prestarted.contains_key(&step) => {
                        docker.kill_container(id, None).await?
                    }
                    _ => {}
                }
                prestarted.entry(step).or_insert(seen);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let report = handle.await??;
    Ok(Watched {
        report,
        events,
        prestarted,
    })
}

fn started(events: &Collector, name: &str) -> Option<usize> {
    events.position(|e| matches!(e, Event::StepStarted { step, .. } if step == name))
}

fn finished(events: &Collector, name: &str) -> Option<usize> {
    events.position(|e| matches!(e, Event::StepFinished { step, .. } if step == name))
}

fn first_log(events: &Collector, name: &str) -> Option<usize> {
    events.position(|e| matches!(e, Event::Log { step, .. } if step == name))
}

/// Everything the events say about one step: only its `StepFinished` for one never started.
fn events_of(events: &Collector, name: &str) -> Vec<Event> {
    events
        .events()
        .into_iter()
        .filter(|e| match e {
            Event::StepStarted { step, .. }
            | Event::Log { step, .. }
            | Event::StepFinished { step, .. } => step == name,
            _ => false,
        })
        .collect()
}

#[tokio::test]
async fn prestarted_step_that_is_skipped_leaves_no_trace() -> TestResult {
    let work = tempfile::tempdir()?;
    let p = pipeline(
        "prestart-skip",
        vec![
            step("fail", &["sleep 2", "exit 1"]),
            after(step("next", &["echo should not run"]), &["fail"]),
        ],
    );
    let watched = run_watching(
        plan(vec![p]),
        options(work.path()),
        "prestart-skip",
        Then::Watch,
    )
    .await?;
    let (report, events) = (&watched.report, &watched.events);

    assert!(
        watched.prestarted.contains_key("next"),
        "`next` was never pre-started: {:?}",
        watched.prestarted
    );
    assert_eq!(report.status, Status::Failure, "{report:#?}");
    assert_eq!(
        step_report(report, "prestart-skip", "next").status,
        Status::Skipped
    );
    let next = events_of(events, "next");
    assert!(
        matches!(
            next.as_slice(),
            [Event::StepFinished {
                status: Status::Skipped,
                duration: Duration::ZERO,
                ..
            }]
        ),
        "a discarded step shows only as skipped: {next:#?}"
    );
    assert_clean(&report.build_id).await?;
    assert_work_root_empty(work.path())
}

#[tokio::test]
async fn cancellation_while_a_step_waits_at_its_gate_leaves_nothing() -> TestResult {
    let work = tempfile::tempdir()?;
    let p = pipeline(
        "prestart-cancel",
        vec![
            step("long", &["echo long-started", "sleep 60"]),
            after(step("next", &["echo never"]), &["long"]),
        ],
    );
    let started_at = Instant::now();
    let watched = run_watching(
        plan(vec![p]),
        options(work.path()),
        "prestart-cancel",
        Then::Cancel("next"),
    )
    .await?;
    let (report, events) = (&watched.report, &watched.events);

    assert!(watched.prestarted.contains_key("next"));
    assert!(
        started_at.elapsed() < Duration::from_secs(30),
        "not cancelled"
    );
    assert_eq!(report.status, Status::Killed, "{report:#?}");
    assert_eq!(
        step_report(report, "prestart-cancel", "long").status,
        Status::Killed
    );
    assert_eq!(
        step_report(report, "prestart-cancel", "next").status,
        Status::Skipped
    );
    assert!(
        matches!(
            events_of(events, "next").as_slice(),
            [Event::StepFinished {
                status: Status::Skipped,
                ..
            }]
        ),
        "{:#?}",
        events.events()
    );
    assert_clean(&report.build_id).await?;
    assert_work_root_empty(work.path())
}

#[tokio::test]
async fn prestarted_step_shows_nothing_before_its_dependency_finished() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut second = after(step("second", &["cat", "echo second-out"]), &["first"]);
    // `cat` must see an empty stdin once the gate is through, not wait for input.
    second.timeout_secs = Some(20);
    let p = pipeline(
        "prestart-order",
        vec![step("first", &["sleep 2", "echo first-done"]), second],
    );
    let watched = run_watching(
        plan(vec![p]),
        options(work.path()),
        "prestart-order",
        Then::Watch,
    )
    .await?;
    let (report, events) = (&watched.report, &watched.events);
    assert_eq!(report.status, Status::Success, "{report:#?}");

    // Pre-started while `first` still ran.
    let seen = watched
        .prestarted
        .get("second")
        .copied()
        .ok_or("`second` was never pre-started")?;
    let first_done = finished(events, "first").ok_or("no end of `first`")?;
    assert!(seen <= first_done, "pre-started only after `first` ended");

    let second_started = started(events, "second").ok_or("`second` never started")?;
    let second_log = first_log(events, "second").ok_or("`second` printed nothing")?;
    assert!(
        first_done < second_started && second_started < second_log,
        "order: first ended at {first_done}, second started at {second_started}, \
         printed at {second_log}: {:#?}",
        events.events()
    );
    assert_eq!(
        events.logs("second"),
        vec!["+ cat", "+ echo second-out", "second-out"]
    );
    assert_eq!(
        events.logs("first"),
        vec!["+ sleep 2", "+ echo first-done", "first-done"]
    );
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn build_status_variables_follow_the_pipeline() -> TestResult {
    let work = tempfile::tempdir()?;
    let show = "echo \"status=$DRONE_BUILD_STATUS/$CI_BUILD_STATUS\"";
    let steps = || {
        let both = RunOn {
            success: true,
            failure: true,
        };
        let mut always = after(step("always", &[show]), &["fail"]);
        always.run_on = both;
        let mut on_failure = after(step("on-failure", &[show]), &["fail"]);
        on_failure.run_on = RunOn {
            success: false,
            failure: true,
        };
        vec![
            step("before", &[show]),
            after(step("fail", &["sleep 2", "exit 1"]), &["before"]),
            always,
            on_failure,
        ]
    };
    let docker_pipeline = pipeline("status-docker", steps());
    let exec_pipeline = exec_pipeline("status-exec", steps());
    let watched = run_watching(
        plan(vec![docker_pipeline, exec_pipeline]),
        options(work.path()),
        "status-docker",
        Then::Watch,
    )
    .await?;
    let (report, events) = (&watched.report, &watched.events);
    assert_eq!(report.status, Status::Failure, "{report:#?}");
    // `always` was pre-started while the pipeline still succeeded, and released after the
    // failure: its variables come from the release, not from when it was created.
    assert!(
        watched.prestarted.contains_key("always"),
        "{:?}",
        watched.prestarted
    );

    let status_line = |pipeline: &str, step: &str| {
        events
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Log {
                    pipeline: p,
                    step: s,
                    line,
                    ..
                } if p == pipeline && s == step && line.starts_with("status=") => Some(line),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    for pipeline in ["status-docker", "status-exec"] {
        assert_eq!(
            status_line(pipeline, "before"),
            vec!["status=success/success"],
            "{pipeline}"
        );
        for step in ["always", "on-failure"] {
            assert_eq!(
                status_line(pipeline, step),
                vec!["status=failure/failure"],
                "{pipeline} {step}"
            );
            assert_eq!(step_report(report, pipeline, step).status, Status::Success);
        }
    }
    assert_clean(&report.build_id).await?;
    assert_work_root_empty(work.path())
}

#[tokio::test]
async fn steps_mounting_temp_volumes_are_not_prestarted() -> TestResult {
    let work = tempfile::tempdir()?;
    let mount = |s: &mut slipway_spec::plan::StepPlan| {
        s.volumes.push(VolumeMount {
            name: "shared".into(),
            path: "/shared".into(),
        })
    };
    let mut write = step("write", &["sleep 2", "echo written > /shared/file"]);
    mount(&mut write);
    let mut read = after(step("read", &["cat /shared/file"]), &["write"]);
    mount(&mut read);
    // Same dependency, no volume: pre-started.
    let other = after(step("other", &["true"]), &["write"]);
    let mut p = pipeline("prestart-volume", vec![write, read, other]);
    p.volumes.push(VolumePlan {
        name: "shared".into(),
        source: VolumeSource::Temp,
    });
    let watched = run_watching(
        plan(vec![p]),
        options(work.path()),
        "prestart-volume",
        Then::Watch,
    )
    .await?;
    let (report, events) = (&watched.report, &watched.events);
    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert!(
        watched.prestarted.contains_key("other") && !watched.prestarted.contains_key("read"),
        "{:?}",
        watched.prestarted
    );
    assert_eq!(events.logs("read"), vec!["+ cat /shared/file", "written"]);
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn prestarted_container_that_died_is_replaced_by_a_normal_start() -> TestResult {
    let work = tempfile::tempdir()?;
    let p = pipeline(
        "prestart-died",
        vec![
            step("first", &["sleep 3"]),
            after(step("second", &["echo second-ran"]), &["first"]),
        ],
    );
    let watched = run_watching(
        plan(vec![p]),
        options(work.path()),
        "prestart-died",
        Then::Kill("second"),
    )
    .await?;
    let (report, events) = (&watched.report, &watched.events);
    assert!(watched.prestarted.contains_key("second"));
    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert_eq!(
        events.logs("second"),
        vec!["+ echo second-ran", "second-ran"]
    );
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn failed_prestart_falls_back_to_a_normal_start() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut missing = after(step("missing", &["true"]), &["first"]);
    missing.image = "slipway-test/does-not-exist:nope".into();
    let p = pipeline(
        "prestart-missing",
        vec![step("first", &["sleep 1"]), missing],
    );
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;
    let missing = step_report(&report, "prestart-missing", "missing");
    assert_eq!(missing.status, Status::Error, "{report:#?}");
    let error = missing.error.as_deref().unwrap_or_default();
    assert!(error.contains("does-not-exist"), "{error}");
    // Reported once, by the normal start, after `first` ended.
    let logs = events.logs("missing");
    assert_eq!(logs.len(), 1, "{logs:#?}");
    let first_done = finished(&events, "first");
    let missing_started = started(&events, "missing");
    assert!(first_done.is_some() && first_done < missing_started);
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn steps_mounting_a_cache_are_prestarted_once_the_cache_exists() -> TestResult {
    let scope = unique_scope("prestart");
    let scopes = CacheScopes(vec![scope.clone()]);
    let build = || {
        let mut fill = after(
            step(
                "fill",
                &[
                    "cat /deps/marker 2>/dev/null || echo none",
                    "echo filled > /deps/marker",
                ],
            ),
            &["first"],
        );
        fill.volumes.push(VolumeMount {
            name: "deps".into(),
            path: "/deps".into(),
        });
        let mut p = pipeline("prestart-cache", vec![step("first", &["sleep 2"]), fill]);
        p.volumes.push(VolumePlan {
            name: "deps".into(),
            source: VolumeSource::Cache { key: None },
        });
        plan(vec![p])
    };
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    options.cache_scope = Some(scope.clone());

    // The first build creates the cache: empty, like a temp volume, so not pre-started.
    let watched = run_watching(build(), options.clone(), "prestart-cache", Then::Watch).await?;
    assert_eq!(
        watched.report.status,
        Status::Success,
        "{:#?}",
        watched.report
    );
    assert!(
        !watched.prestarted.contains_key("fill"),
        "{:?}",
        watched.prestarted
    );
    assert_eq!(
        watched.events.logs("fill"),
        [
            "+ cat /deps/marker 2>/dev/null || echo none",
            "none",
            "+ echo filled > /deps/marker"
        ]
    );
    assert_clean(&watched.report.build_id).await?;

    // The second finds it filled: pre-started, and it sees what the first build left.
    let watched = run_watching(build(), options, "prestart-cache", Then::Watch).await?;
    assert_eq!(
        watched.report.status,
        Status::Success,
        "{:#?}",
        watched.report
    );
    assert!(
        watched.prestarted.contains_key("fill"),
        "{:?}",
        watched.prestarted
    );
    assert_eq!(
        watched.events.logs("fill"),
        [
            "+ cat /deps/marker 2>/dev/null || echo none",
            "filled",
            "+ echo filled > /deps/marker"
        ]
    );
    assert_clean(&watched.report.build_id).await?;
    drop(scopes);
    assert!(CacheScopes(vec![scope]).volumes().is_empty());
    Ok(())
}
