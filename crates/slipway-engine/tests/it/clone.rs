//! The clone pseudo-step: a local git repository checked out at the requested commit.

use std::path::Path;
use std::process::Command;

use slipway_engine::{Event, Status, WorkspaceSource};
use slipway_spec::plan::PipelinePlan;

use crate::support::*;

fn git(dir: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// A repository with two commits: `first.txt`, then `second.txt`. Returns both ids.
fn make_repo(dir: &Path) -> Result<(String, String), Box<dyn std::error::Error + Send + Sync>> {
    git(dir, &["init", "-q", "-b", "main"])?;
    std::fs::write(dir.join("first.txt"), "content-of-first\n")?;
    git(dir, &["add", "first.txt"])?;
    git(dir, &["commit", "-q", "-m", "first"])?;
    let first = git(dir, &["rev-parse", "HEAD"])?;
    std::fs::write(dir.join("second.txt"), "content-of-second\n")?;
    git(dir, &["add", "second.txt"])?;
    git(dir, &["commit", "-q", "-m", "second"])?;
    let second = git(dir, &["rev-parse", "HEAD"])?;
    Ok((first, second))
}

fn with_clone(mut p: PipelinePlan) -> PipelinePlan {
    p.clone.disable = false;
    p
}

#[tokio::test]
async fn step_sees_the_repository_at_the_requested_commit() -> TestResult {
    let repo = tempfile::tempdir()?;
    let (first, _second) = make_repo(repo.path())?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    options.workspace = WorkspaceSource::Git {
        repo: repo.path().to_path_buf(),
        commit: first.clone(),
        depth: None,
    };
    let p = with_clone(pipeline(
        "clone",
        vec![step(
            "look",
            &[
                "pwd",
                "cat /drone/src/first.txt",
                "test ! -e second.txt",
                "ls -a",
            ],
        )],
    ));
    let (report, events) = run(&plan(vec![p]), options).await?;

    assert_eq!(
        report.status,
        Status::Success,
        "{report:#?} {:#?}",
        events.all_logs()
    );
    assert_eq!(
        step_report(&report, "clone", "clone").status,
        Status::Success
    );
    let logs = events.logs("look");
    assert!(logs.iter().any(|l| l == "/drone/src"), "{logs:#?}");
    assert!(logs.iter().any(|l| l == "content-of-first"));
    assert!(logs.iter().any(|l| l == ".git"));
    // The clone is reported as a step of its own, before the others.
    let clone_end =
        events.position(|e| matches!(e, Event::StepFinished { step, .. } if step == "clone"));
    let look_start =
        events.position(|e| matches!(e, Event::StepStarted { step, .. } if step == "look"));
    assert!(clone_end < look_start);
    assert!(
        events
            .logs("clone")
            .iter()
            .any(|l| l.starts_with("+ git clone"))
    );
    assert_clean(&report.build_id).await?;
    assert_work_root_empty(work.path())
}

#[tokio::test]
async fn shallow_clone_of_a_local_repository() -> TestResult {
    let repo = tempfile::tempdir()?;
    let (first, _second) = make_repo(repo.path())?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    options.workspace = WorkspaceSource::Git {
        repo: repo.path().to_path_buf(),
        commit: first.clone(),
        depth: Some(1),
    };
    let p = with_clone(exec_pipeline(
        "shallow",
        vec![step(
            "look",
            &[
                "git rev-parse HEAD",
                "git rev-list --count HEAD",
                "cat first.txt",
                "test ! -e second.txt",
            ],
        )],
    ));
    let (report, events) = run(&plan(vec![p]), options).await?;

    assert_eq!(report.status, Status::Success, "{:#?}", events.all_logs());
    let logs = events.logs("look");
    assert!(logs.contains(&first), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l == "1"),
        "history must be one commit deep: {logs:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn failed_clone_fails_the_pipeline_with_gits_message() -> TestResult {
    let repo = tempfile::tempdir()?;
    make_repo(repo.path())?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    options.workspace = WorkspaceSource::Git {
        repo: repo.path().to_path_buf(),
        commit: "no-such-ref".into(),
        depth: None,
    };
    let p = with_clone(exec_pipeline("bad", vec![step("never", &["true"])]));
    let (report, _events) = run(&plan(vec![p]), options).await?;

    assert_eq!(report.status, Status::Failure);
    let clone = step_report(&report, "bad", "clone");
    assert_eq!(clone.status, Status::Failure);
    let error = clone.error.as_deref().unwrap_or_default();
    assert!(error.contains("no-such-ref"), "{error}");
    assert_eq!(step_report(&report, "bad", "never").status, Status::Skipped);
    Ok(())
}
