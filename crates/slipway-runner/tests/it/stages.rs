//! Stages that go well: what the server receives.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use slipway_engine::Status;
use slipway_runner::protocol::{StageEvent, WorkspaceSpec};

use crate::fake::{self, Script, summary};
use crate::support::{lease, plan, start_runner};

fn numbers(from: u64, to: u64) -> Vec<String> {
    (from..=to).map(|i| i.to_string()).collect()
}

#[tokio::test]
async fn a_stage_streams_every_line_once_in_order_then_reports_success() {
    let (fake, addr) = fake::start(Script::default()).await;
    fake.push_lease(lease(
        plan(
            &[
                ("greet", &["echo hello", "echo world"]),
                ("count", &["seq 1 50"]),
            ],
            false,
        ),
        WorkspaceSpec::Empty,
    ));
    let runner = start_runner(addr);
    let done = fake.wait_done(Duration::from_secs(120)).await;
    runner.stop().await.expect("the runner stops cleanly");

    let record = fake.record();
    assert_eq!(done.status, Status::Success, "{}", summary(&record));
    assert_eq!(done.error, None);
    assert_eq!(done.attempt, 1);
    assert_eq!(record.done.len(), 1);
    assert_eq!(record.done[0].0, 42);
    assert!(record.problems.is_empty(), "{}", summary(&record));
    assert!(record.duplicates.is_empty(), "{}", summary(&record));
    drop(record);

    assert_eq!(
        fake.lines("greet"),
        ["+ echo hello", "hello", "+ echo world", "world"]
    );
    let mut count = vec!["+ seq 1 50".to_string()];
    count.extend(numbers(1, 50));
    assert_eq!(fake.lines("count"), count);

    let record = fake.record();
    let steps: Vec<(&str, &str, Option<Status>)> = record
        .steps
        .iter()
        .map(|e| match e {
            StageEvent::StepStarted { step, .. } => ("started", step.as_str(), None),
            StageEvent::StepFinished { step, status, .. } => {
                ("finished", step.as_str(), Some(*status))
            }
            StageEvent::Log { .. } => ("log", "", None),
            StageEvent::Artifact { .. } => ("artifact", "", None),
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("started", "greet", None),
            ("finished", "greet", Some(Status::Success)),
            ("started", "count", None),
            ("finished", "count", Some(Status::Success)),
        ]
    );
    let registration = &record.registrations[0];
    assert_eq!(
        registration.protocol,
        slipway_runner::protocol::PROTOCOL_VERSION
    );
    assert_eq!(registration.name, "test-runner");
    assert_eq!(registration.capacity, 1);
    assert_eq!(
        registration.labels.get("zone").map(String::as_str),
        Some("test")
    );
    assert_eq!(
        registration.labels.get("os").map(String::as_str),
        Some("linux")
    );
    assert!(registration.labels.contains_key("arch"));
    // Times are unix milliseconds, and a step ends after it starts.
    let times: Vec<i64> = record
        .steps
        .iter()
        .filter_map(|e| match e {
            StageEvent::StepStarted { time, .. } | StageEvent::StepFinished { time, .. } => {
                Some(*time)
            }
            StageEvent::Log { .. } | StageEvent::Artifact { .. } => None,
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(times[0] > 1_600_000_000_000, "{times:?}");
}

/// Queues stages 42 (`first`) and 43 (`second`) in `fake`, runs a runner against it until
/// both have ended, and stops it.
async fn run_two_stages(fake: &fake::Fake, addr: std::net::SocketAddr) {
    fake.push_lease(lease(
        plan(&[("first", &["echo one"])], false),
        WorkspaceSpec::Empty,
    ));
    let mut second = lease(
        plan(&[("second", &["echo two"])], false),
        WorkspaceSpec::Empty,
    );
    second.stage_id = 43;
    fake.push_lease(second);
    let runner = start_runner(addr);
    fake.wait_for("two ends", Duration::from_secs(120), |r| r.done.len() == 2)
        .await;
    runner.stop().await.expect("the runner stops cleanly");
}

#[tokio::test]
async fn a_heartbeat_refused_while_done_is_answered_loses_nothing() {
    // The server ends the stage as soon as `/done` arrives; a heartbeat that crosses the
    // answer is refused `lease_lost`. The runner must still take the next stage that the
    // answer hands over, and not abandon the one it reported.
    let (fake, addr) = fake::start(Script {
        heartbeat_secs: 1,
        done_answer_delay: Some(Duration::from_millis(2_500)),
        ..Script::default()
    })
    .await;
    run_two_stages(&fake, addr).await;

    let record = fake.record();
    assert!(record.problems.is_empty(), "{}", summary(&record));
    assert!(
        record.heartbeats_after_done > 0,
        "a heartbeat crossed the answer: {}",
        summary(&record)
    );
    assert_eq!(record.handed, [43], "{}", summary(&record));
    let ends: Vec<(i64, Status)> = record.done.iter().map(|(id, d)| (*id, d.status)).collect();
    assert_eq!(ends, [(42, Status::Success), (43, Status::Success)]);
}

#[tokio::test]
async fn the_answer_to_done_can_hand_over_the_next_stage() {
    let (fake, addr) = fake::start(Script::default()).await;
    run_two_stages(&fake, addr).await;

    let record = fake.record();
    assert!(record.problems.is_empty(), "{}", summary(&record));
    // One poll got the first stage; its /done asked for more and got the second.
    assert_eq!(record.handed, [43], "{}", summary(&record));
    assert_eq!(record.polls_at_done, [1, 1], "{}", summary(&record));
    let ends: Vec<(i64, Status, bool)> = record
        .done
        .iter()
        .map(|(id, d)| (*id, d.status, d.next))
        .collect();
    assert_eq!(
        ends,
        [(42, Status::Success, true), (43, Status::Success, true)]
    );
    drop(record);
    assert_eq!(fake.lines("first"), ["+ echo one", "one"]);
    assert_eq!(fake.lines("second"), ["+ echo two", "two"]);
}

#[tokio::test]
async fn twenty_thousand_lines_arrive_complete_in_few_batches() {
    let (fake, addr) = fake::start(Script::default()).await;
    fake.push_lease(lease(
        plan(&[("many", &["seq 1 20000"])], false),
        WorkspaceSpec::Empty,
    ));
    let runner = start_runner(addr);
    let done = fake.wait_done(Duration::from_secs(120)).await;
    runner.stop().await.expect("the runner stops cleanly");

    assert_eq!(done.status, Status::Success);
    let mut expected = vec!["+ seq 1 20000".to_string()];
    expected.extend(numbers(1, 20_000));
    let lines = fake.lines("many");
    assert_eq!(lines.len(), expected.len());
    assert!(lines == expected, "lines differ");
    let record = fake.record();
    assert!(record.problems.is_empty(), "{}", summary(&record));
    let batches = record.requests.len();
    eprintln!("20,001 lines in {batches} batches");
    assert!(batches <= 200, "{batches} batches for 20,001 lines");
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn a_commit_only_on_a_pull_request_ref_is_checked_out() {
    // `main` has one commit; the pull request's commit is reachable only from
    // refs/pull/1/head, which `git clone` does not fetch.
    let repo = tempfile::tempdir().expect("repo dir");
    let dir = repo.path();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("main.txt"), "main-content\n").expect("write");
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "main"]);
    git(dir, &["checkout", "-q", "-b", "topic"]);
    std::fs::write(dir.join("pr.txt"), "pr-content\n").expect("write");
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "pull request"]);
    let pr = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["update-ref", "refs/pull/1/head", &pr]);
    git(dir, &["checkout", "-q", "main"]);
    git(dir, &["branch", "-q", "-D", "topic"]);

    let (fake, addr) = fake::start(Script::default()).await;
    fake.push_lease(lease(
        plan(
            &[(
                "check",
                &["cat pr.txt main.txt", "test \"$(cat pr.txt)\" = pr-content"],
            )],
            true,
        ),
        // A URL, not a path: a clone of a local path would copy every object anyway.
        WorkspaceSpec::Git {
            url: format!("file://{}", dir.display()),
            reference: "refs/pull/1/head".into(),
            commit: pr.clone(),
        },
    ));
    let runner = start_runner(addr);
    let done = fake.wait_done(Duration::from_secs(120)).await;
    runner.stop().await.expect("the runner stops cleanly");

    assert_eq!(
        done.status,
        Status::Success,
        "{done:?}\nclone: {:#?}\ncheck: {:#?}",
        fake.lines("clone"),
        fake.lines("check")
    );
    assert!(fake.lines("check").contains(&"pr-content".to_string()));
    assert!(!fake.lines("clone").is_empty());
}

/// A `type: exec` lease runs on the host only on a runner started with `--allow-exec`:
/// elsewhere it ends as `error` naming the pipeline and the flag, and nothing ran.
#[tokio::test]
async fn an_exec_lease_runs_only_on_a_runner_that_allows_exec() {
    let host = tempfile::tempdir().expect("a host directory");
    let marker = host.path().join("ran-on-the-host");
    let exec_plan = || {
        let yaml = format!(
            "kind: pipeline\ntype: exec\nname: on-host\nclone:\n  disable: true\nsteps:\n\
             - name: touch\n  commands: [\"touch {}\"]\n",
            marker.display()
        );
        slipway_spec::compile(&yaml, &slipway_spec::BuildContext::default())
            .expect("compiles")
            .plan
    };
    for allow_exec in [false, true] {
        let (fake, addr) = fake::start(Script::default()).await;
        let mut exec_lease = lease(exec_plan(), WorkspaceSpec::Empty);
        exec_lease.trusted = true;
        fake.push_lease(exec_lease);
        let runner = crate::support::start_runner_with(addr, |c| c.allow_exec = allow_exec);
        let done = fake.wait_done(Duration::from_secs(60)).await;
        runner.stop().await.expect("the runner stops cleanly");
        assert!(
            fake.record().registrations[0].allow_exec == allow_exec,
            "the registration says whether it runs exec"
        );
        if allow_exec {
            assert_eq!(done.status, Status::Success, "{:?}", done.error);
            assert!(marker.exists(), "an allowing runner ran it");
        } else {
            assert_eq!(done.status, Status::Error);
            let error = done.error.clone().unwrap_or_default();
            assert!(
                error.contains("`on-host`") && error.contains("--allow-exec"),
                "{error}"
            );
            assert!(!marker.exists(), "nothing ran on the host");
        }
    }
}
