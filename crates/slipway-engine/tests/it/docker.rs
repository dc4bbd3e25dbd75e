//! Docker pipelines: services, volumes, parallelism, failures, detach, time-outs, secrets,
//! cancellation. Every test ends with the leftover check (`assert_clean`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_engine::{Event, Status};
use slipway_spec::plan::{RunOn, SecretEnv, VolumeMount, VolumePlan, VolumeSource};

use crate::support::*;

/// Retries `wget` against `url` until it prints `expected` (services need a moment).
fn fetch_until(url: &str, expected: &str) -> String {
    format!(
        "i=0; until wget -qO- {url} 2>/dev/null | grep {expected}; do \
         i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done"
    )
}

#[tokio::test]
async fn service_is_reachable_by_name() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut web = step(
        "web",
        &[
            "mkdir -p /www",
            "echo hello-from-service > /www/index.html",
            "httpd -f -p 80 -h /www",
        ],
    );
    web.environment.insert("SERVICE_ONLY".into(), "1".into());
    let mut p = pipeline(
        "svc",
        vec![step(
            "fetch",
            &[&fetch_until("http://web/", "hello-from-service")],
        )],
    );
    p.services.push(web);
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;

    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert!(
        events
            .logs("fetch")
            .iter()
            .any(|l| l == "hello-from-service")
    );
    // The service's own output is logged under its name.
    assert!(events.logs("web").iter().any(|l| l == "+ mkdir -p /www"));
    assert_eq!(step_report(&report, "svc", "web").status, Status::Success);
    assert_clean(&report.build_id).await?;
    assert_work_root_empty(work.path())
}

#[tokio::test]
async fn temp_volume_is_shared_between_steps() -> TestResult {
    let work = tempfile::tempdir()?;
    let mount = |s: &mut slipway_spec::plan::StepPlan| {
        s.volumes.push(VolumeMount {
            name: "shared".into(),
            path: "/shared".into(),
        })
    };
    let mut write = step("write", &["echo data-from-writer > /shared/file"]);
    mount(&mut write);
    let mut read = after(step("read", &["cat /shared/file"]), &["write"]);
    mount(&mut read);
    let mut p = pipeline("vol", vec![write, read]);
    p.volumes.push(VolumePlan {
        name: "shared".into(),
        source: VolumeSource::Temp,
    });
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;

    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert!(events.logs("read").iter().any(|l| l == "data-from-writer"));
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn independent_steps_run_in_parallel() -> TestResult {
    let work = tempfile::tempdir()?;
    let p = pipeline(
        "par",
        vec![
            step("first", &["true"]),
            after(step("a", &["sleep 2"]), &["first"]),
            after(step("b", &["sleep 2"]), &["first"]),
        ],
    );
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;
    assert_eq!(report.status, Status::Success, "{report:#?}");

    let started = |name: &str| {
        events.position(|e| matches!(e, Event::StepStarted { step, .. } if step == name))
    };
    let finished = |name: &str| {
        events.position(|e| matches!(e, Event::StepFinished { step, .. } if step == name))
    };
    let (Some(sa), Some(sb), Some(fa), Some(fb), Some(ff)) = (
        started("a"),
        started("b"),
        finished("a"),
        finished("b"),
        finished("first"),
    ) else {
        panic!("missing events: {:#?}", events.events());
    };
    assert!(ff < sa && ff < sb, "a and b must wait for first");
    assert!(
        sa < fb && sb < fa,
        "a and b must overlap: {:#?}",
        events.events()
    );
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn failure_runs_failure_steps_and_skips_success_steps() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut on_failure = after(step("on-failure", &["echo cleaning up"]), &["fail"]);
    on_failure.run_on = RunOn {
        success: false,
        failure: true,
    };
    let p = pipeline(
        "fails",
        vec![
            step("fail", &["echo before", "exit 3", "echo never"]),
            on_failure,
            after(step("on-success", &["echo deploy"]), &["fail"]),
        ],
    );
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;

    assert_eq!(report.status, Status::Failure);
    assert_eq!(report.pipelines[0].status, Status::Failure);
    let fail = step_report(&report, "fails", "fail");
    assert_eq!((fail.status, fail.exit_code), (Status::Failure, Some(3)));
    assert!(!events.logs("fail").iter().any(|l| l == "never"));
    assert_eq!(
        step_report(&report, "fails", "on-failure").status,
        Status::Success
    );
    assert!(events.logs("on-failure").iter().any(|l| l == "cleaning up"));
    assert_eq!(
        step_report(&report, "fails", "on-success").status,
        Status::Skipped
    );
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn ignored_failure_does_not_fail_the_pipeline() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut flaky = step("flaky", &["exit 1"]);
    flaky.failure_ignore = true;
    let p = pipeline(
        "ignore",
        vec![flaky, after(step("next", &["echo next ran"]), &["flaky"])],
    );
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;

    assert_eq!(report.status, Status::Success, "{report:#?}");
    let flaky = step_report(&report, "ignore", "flaky");
    assert_eq!((flaky.status, flaky.exit_code), (Status::Failure, Some(1)));
    assert!(events.logs("next").iter().any(|l| l == "next ran"));
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn detached_step_serves_later_steps_and_is_stopped_at_the_end() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut server = step(
        "server",
        &[
            "mkdir -p /www",
            "echo detached-ok > /www/index.html",
            "httpd -f -p 8080 -h /www",
        ],
    );
    server.detach = true;
    let p = pipeline(
        "detach",
        vec![
            server,
            after(
                step(
                    "client",
                    &[&fetch_until("http://server:8080/", "detached-ok")],
                ),
                &["server"],
            ),
        ],
    );
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;

    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert!(events.logs("client").iter().any(|l| l == "detached-ok"));
    let server = step_report(&report, "detach", "server");
    assert_eq!(server.status, Status::Success);
    assert!(
        events
            .logs("server")
            .iter()
            .any(|l| l == "stopped at the end of the pipeline")
    );
    // It was still running when the client finished: its end comes after the client's.
    let client_end =
        events.position(|e| matches!(e, Event::StepFinished { step, .. } if step == "client"));
    let server_end =
        events.position(|e| matches!(e, Event::StepFinished { step, .. } if step == "server"));
    assert!(client_end < server_end);
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn step_timeout_kills_the_step() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut slow = step("slow", &["sleep 30"]);
    slow.timeout_secs = Some(2);
    let p = pipeline(
        "timeout",
        vec![slow, after(step("later", &["true"]), &["slow"])],
    );
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;

    assert_eq!(
        step_report(&report, "timeout", "slow").status,
        Status::Killed
    );
    assert!(
        events
            .logs("slow")
            .iter()
            .any(|l| l == "step timed out after 2s")
    );
    assert_eq!(
        step_report(&report, "timeout", "later").status,
        Status::Skipped
    );
    // A step's own time limit fails the pipeline; only cancellation kills it.
    assert_eq!(report.pipelines[0].status, Status::Failure);
    assert_eq!(report.status, Status::Failure);
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn timed_out_step_with_failure_ignore_does_not_fail_the_pipeline() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut slow = step("slow", &["sleep 30"]);
    slow.timeout_secs = Some(1);
    slow.failure_ignore = true;
    let p = pipeline(
        "timeout-ignored",
        vec![slow, after(step("later", &["true"]), &["slow"])],
    );
    let (report, _) = run(&plan(vec![p]), options(work.path())).await?;
    assert_eq!(
        step_report(&report, "timeout-ignored", "slow").status,
        Status::Killed
    );
    assert_eq!(
        step_report(&report, "timeout-ignored", "later").status,
        Status::Success
    );
    assert_eq!(report.status, Status::Success);
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn secrets_are_masked_and_only_given_to_steps_that_name_them() -> TestResult {
    let work = tempfile::tempdir()?;
    let token = "s3cr3t-T0ken-value";
    let multi = "line-one-AAAA\r\nline-two-BBBB\n";
    let mut uses = step(
        "uses",
        &[
            "echo $TOKEN",
            "echo \"prefix-${TOKEN}-suffix\"",
            "echo \"$MULTI\"",
            "echo \"[$MISSING]\"",
            // No newline at the end: the partial last line is flushed and masked too.
            "printf 'tail:%s' \"$TOKEN\"",
        ],
    );
    uses.secrets = vec![
        SecretEnv {
            env: "TOKEN".into(),
            secret: "token".into(),
        },
        SecretEnv {
            env: "MULTI".into(),
            secret: "multi".into(),
        },
        SecretEnv {
            env: "MISSING".into(),
            secret: "not-there".into(),
        },
    ];
    let other = step("other", &["echo \"other:[$TOKEN]\""]);
    let mut options = options(work.path());
    options.secrets = BTreeMap::from([
        ("token".to_string(), token.to_string()),
        ("multi".to_string(), multi.to_string()),
    ]);
    let (report, events) =
        run(&plan(vec![pipeline("secrets", vec![uses, other])]), options).await?;
    assert_eq!(report.status, Status::Success, "{report:#?}");

    for line in events.all_logs() {
        for secret in [token, "line-one-AAAA", "line-two-BBBB"] {
            assert!(!line.contains(secret), "secret leaked in {line:?}");
        }
    }
    let logs = events.logs("uses");
    for expected in ["******", "prefix-******-suffix", "[]", "tail:******"] {
        assert!(
            logs.iter().any(|l| l == expected),
            "no {expected:?} in {logs:#?}"
        );
    }
    // The multi-line value came out as two masked lines.
    assert!(
        logs.windows(2)
            .any(|w| w[0] == "******" && w[1] == "******"),
        "{logs:#?}"
    );
    // The trace shows the command, not the expanded value.
    assert!(logs.iter().any(|l| l == "+ echo $TOKEN"));
    assert!(
        logs.iter()
            .any(|l| l.contains("secret `not-there` is not available"))
    );
    assert!(events.logs("other").iter().any(|l| l == "other:[]"));
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn cancellation_kills_everything_and_cleans_up() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut long = step("long", &["echo long-started", "sleep 60"]);
    long.volumes.push(VolumeMount {
        name: "cache".into(),
        path: "/cache".into(),
    });
    let mut p = pipeline(
        "cancel",
        vec![long, after(step("never", &["true"]), &["long"])],
    );
    p.services.push(step("sidecar", &["sleep 60"]));
    p.volumes.push(VolumePlan {
        name: "cache".into(),
        source: VolumeSource::Temp,
    });
    let options = options(work.path());
    let cancel = options.cancel.clone();
    let plan = plan(vec![p]);
    let events = Arc::new(Collector::default());
    let sink = events.clone();
    let handle = tokio::spawn(async move { slipway_engine::run(&plan, options, sink).await });

    // Cancel once the step really runs (its first line arrived).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events.logs("long").iter().any(|l| l == "long-started") {
        assert!(Instant::now() < deadline, "the step never started");
        assert!(!handle.is_finished(), "run ended before it was cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    cancel.cancel();
    let report = tokio::time::timeout(Duration::from_secs(30), handle).await???;
    let teardown = started.elapsed();

    assert_eq!(report.status, Status::Killed, "{report:#?}");
    assert_eq!(
        step_report(&report, "cancel", "long").status,
        Status::Killed
    );
    assert_eq!(
        step_report(&report, "cancel", "never").status,
        Status::Skipped
    );
    assert!(events.logs("long").iter().any(|l| l == "long-started"));
    assert!(events.logs("long").iter().any(|l| l == "build cancelled"));
    assert!(
        teardown < Duration::from_secs(15),
        "teardown took {teardown:?}"
    );
    assert_clean(&report.build_id).await?;
    assert_work_root_empty(work.path())
}

#[tokio::test]
async fn untrusted_builds_cannot_mount_host_paths_or_run_privileged() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut host = step("host", &["true"]);
    host.volumes.push(VolumeMount {
        name: "docker".into(),
        path: "/var/run/docker.sock".into(),
    });
    let mut privileged = step("privileged", &["true"]);
    privileged.privileged = true;
    let mut p = pipeline("trust", vec![host, privileged]);
    p.volumes.push(VolumePlan {
        name: "docker".into(),
        source: VolumeSource::Host {
            path: "/var/run/docker.sock".into(),
        },
    });
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;

    assert_eq!(report.status, Status::Failure);
    for name in ["host", "privileged"] {
        let step = step_report(&report, "trust", name);
        assert_eq!(step.status, Status::Error);
        assert!(
            step.error.as_deref().is_some_and(|e| e.contains("trusted")),
            "{step:?}"
        );
        assert!(events.logs(name).iter().any(|l| l.contains("trusted")));
    }
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn missing_image_is_a_clear_step_error() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut s = step("missing", &["true"]);
    s.image = "slipway-test/does-not-exist:nope".into();
    let (report, _events) =
        run(&plan(vec![pipeline("img", vec![s])]), options(work.path())).await?;
    let s = step_report(&report, "img", "missing");
    assert_eq!(s.status, Status::Error);
    let error = s.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("slipway-test/does-not-exist:nope") && error.contains("never"),
        "{error}"
    );
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn step_user_can_write_the_workspace() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut nobody = step(
        "nobody",
        &["id -u", "echo written > by-nobody.txt", "cat by-nobody.txt"],
    );
    nobody.user = Some("65534".into());
    let (report, events) = run(
        &plan(vec![pipeline("user", vec![nobody])]),
        options(work.path()),
    )
    .await?;
    assert_eq!(report.status, Status::Success, "{:#?}", events.all_logs());
    let logs = events.logs("nobody");
    assert!(logs.iter().any(|l| l == "65534") && logs.iter().any(|l| l == "written"));
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn steps_without_commands_use_entrypoint_and_command() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut plugin = step("plugin", &[]);
    plugin.entrypoint = Some(vec!["/bin/echo".into()]);
    plugin.command = Some(vec!["plugin-said".into(), "$NOT_EXPANDED".into()]);
    let (report, events) = run(
        &plan(vec![pipeline("plugin", vec![plugin])]),
        options(work.path()),
    )
    .await?;
    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert_eq!(
        events.logs("plugin"),
        vec!["plugin-said $NOT_EXPANDED".to_string()]
    );
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn trusted_builds_mount_host_paths() -> TestResult {
    let work = tempfile::tempdir()?;
    let host_dir = tempfile::tempdir()?;
    let mut write = step("write", &["echo from-container > /host/out.txt"]);
    write.volumes.push(VolumeMount {
        name: "host".into(),
        path: "/host".into(),
    });
    let mut p = pipeline("trusted", vec![write]);
    p.volumes.push(VolumePlan {
        name: "host".into(),
        source: VolumeSource::Host {
            path: host_dir.path().to_string_lossy().into_owned(),
        },
    });
    let mut options = options(work.path());
    options.trusted = true;
    let (report, _) = run(&plan(vec![p]), options).await?;
    assert_eq!(report.status, Status::Success, "{report:#?}");
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("out.txt"))?,
        "from-container\n"
    );
    assert_clean(&report.build_id).await
}
