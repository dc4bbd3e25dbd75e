//! The host backend (`type: exec`).

use std::time::{Duration, Instant};

use slipway_engine::Status;

use crate::support::*;

#[tokio::test]
async fn exec_pipeline_runs_in_the_workspace_with_env_and_fails_on_exit_1() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut env = step(
        "env",
        &[
            "pwd",
            "echo \"var=$MY_VAR\"",
            "test \"$DRONE_WORKSPACE\" = \"$(pwd)\"",
            "test \"$CI_WORKSPACE\" = \"$(pwd)\"",
            // Only the step's environment (plus PATH and HOME) reaches it.
            "test -z \"$CARGO_MANIFEST_DIR\"",
            "echo made-by-env > file.txt",
        ],
    );
    env.environment.insert("MY_VAR".into(), "hello-host".into());
    env.environment
        .insert("DRONE_WORKSPACE".into(), "/drone/src".into());
    let p = exec_pipeline(
        "exec",
        vec![
            env,
            after(step("check", &["cat file.txt"]), &["env"]),
            after(step("fail", &["echo failing", "exit 1"]), &["check"]),
        ],
    );
    let (report, events) = run(&plan(vec![p]), options(work.path())).await?;

    let env_logs = events.logs("env");
    assert_eq!(
        step_report(&report, "exec", "env").status,
        Status::Success,
        "{env_logs:#?}"
    );
    let cwd = env_logs.get(1).cloned().unwrap_or_default();
    assert!(
        cwd.starts_with(&*work.path().to_string_lossy()),
        "cwd {cwd}"
    );
    assert!(env_logs.iter().any(|l| l == "var=hello-host"));
    assert!(events.logs("check").iter().any(|l| l == "made-by-env"));
    let fail = step_report(&report, "exec", "fail");
    assert_eq!((fail.status, fail.exit_code), (Status::Failure, Some(1)));
    assert_eq!(report.status, Status::Failure);
    assert_work_root_empty(work.path())
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() -> TestResult {
    let work = tempfile::tempdir()?;
    let pids = tempfile::tempdir()?;
    let pidfile = pids.path().join("bg.pid");
    let mut slow = step(
        "slow",
        &["sleep 300 &", "echo $! > \"$PIDFILE\"", "sleep 30"],
    );
    slow.environment
        .insert("PIDFILE".into(), pidfile.to_string_lossy().into_owned());
    slow.timeout_secs = Some(1);
    let (report, events) = run(
        &plan(vec![exec_pipeline("exec-timeout", vec![slow])]),
        options(work.path()),
    )
    .await?;

    assert_eq!(
        step_report(&report, "exec-timeout", "slow").status,
        Status::Killed
    );
    assert!(
        events
            .logs("slow")
            .iter()
            .any(|l| l == "step timed out after 1s")
    );
    let pid = std::fs::read_to_string(&pidfile)?.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(&pid) {
        assert!(
            Instant::now() < deadline,
            "background process {pid} survived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Alive and not a zombie (a zombie is dead; only its parent has yet to reap it).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}
