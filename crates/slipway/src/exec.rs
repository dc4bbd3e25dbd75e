//! `slipway exec`: run the repository's pipelines on the local Docker engine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use slipway_engine::{EventSink, RunOptions, Status, WorkspaceSource};
use slipway_spec::Plan;
use tokio_util::sync::CancellationToken;

use crate::build_args::{BuildArgs, GitInfo, find_pipeline_file, repo_dir_of};
use crate::plan::compile_file;
use crate::printer::{JsonPrinter, TerminalPrinter};
use crate::secrets_file;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Pipeline file (default: .slipway.yml, then .drone.yml).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub build: BuildArgs,
    /// Run only this pipeline (repeatable).
    #[arg(long = "pipeline", value_name = "NAME")]
    pub pipelines: Vec<String>,
    /// A secret for `from_secret`, NAME=VALUE (repeatable).
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub secrets: Vec<String>,
    /// A dotenv-style file of secrets (NAME=VALUE lines).
    #[arg(long)]
    pub secrets_file: Option<PathBuf>,
    /// Allow host volumes and privileged steps.
    #[arg(long)]
    pub trusted: bool,
    /// Time limit for the whole build, e.g. 30m (default: none).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Time limit for each step without its own `timeout`, e.g. 10m (default: none).
    #[arg(long, value_parser = parse_duration)]
    pub step_timeout: Option<Duration>,
    /// Print events as JSON lines (with a final report line) instead of the terminal view.
    #[arg(long)]
    pub json: bool,
    /// The API base of a notification kind for native notification steps, KIND=URL
    /// (repeatable), e.g. `wechat-work=http://127.0.0.1:9000`.
    #[arg(long = "notify-api", value_name = "KIND=URL", value_parser = crate::up::parse_notify_api)]
    pub notify_api: Vec<(slipway_engine::NotifyKind, String)>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    slipway_spec::parse::parse_duration(text)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is not a duration (e.g. 90, 30s, 10m, 1h30m)"))
}

pub fn run(args: ExecArgs) -> Result<ExitCode> {
    let path = find_pipeline_file(args.file.as_deref())?;
    let repo_dir = repo_dir_of(&path);
    let ctx = args.build.context(&repo_dir)?;
    let mut plan = compile_file(&path, &ctx)?.plan;
    select_pipelines(&mut plan, &args.pipelines)?;
    let secrets = secrets_file::collect(args.secrets_file.as_deref(), &args.secrets)?;

    let needs_clone = plan
        .pipelines
        .iter()
        .any(|p| !p.skipped && !p.clone.disable);
    let workspace = match GitInfo::read(&repo_dir, args.build.commit.as_deref()).commit {
        Some(commit) => WorkspaceSource::Git {
            repo: toplevel(&repo_dir)?,
            commit,
            depth: None,
        },
        None if !needs_clone => WorkspaceSource::Empty,
        None => bail!(
            "{} is not in a git repository with a commit, so there is nothing to clone\n  hint: `git init && git add -A && git commit -m init`, or set `clone: {{disable: true}}`",
            repo_dir.display()
        ),
    };

    // Local runs keep their dependency caches per checkout.
    let checkout = match &workspace {
        WorkspaceSource::Git { repo, .. } => repo.clone(),
        WorkspaceSource::Empty => toplevel(&repo_dir).unwrap_or_else(|_| repo_dir.clone()),
    };

    let mut step_names: Vec<String> = vec!["clone".to_owned()];
    for s in plan
        .pipelines
        .iter()
        .flat_map(|p| p.services.iter().chain(&p.steps))
    {
        if !step_names.contains(&s.name) {
            step_names.push(s.name.clone());
        }
    }
    let (sink, output): (Arc<dyn EventSink>, Output) = if args.json {
        let printer = Arc::new(JsonPrinter::default());
        (printer.clone(), Output::Json(printer))
    } else {
        let printer = Arc::new(TerminalPrinter::new(&step_names, plan.pipelines.len() > 1));
        (printer.clone(), Output::Terminal(printer))
    };

    // One thread, as for a runner of one stage at a time: the engine waits on Docker and
    // processes, and its file work goes to tokio's blocking threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::warn!("cancelling: stopping steps and removing containers");
                on_signal.cancel();
            }
        });
        let options = RunOptions {
            workspace,
            secrets,
            trusted: args.trusted,
            cancel,
            work_root: std::env::temp_dir().join("slipway-exec"),
            default_step_timeout: args.step_timeout,
            build_timeout: args.timeout,
            native_plugins: true,
            own_registry: None,
            cache_scope: Some(slipway_engine::cache::local_scope(&checkout)),
            notify_api: args.notify_api.iter().cloned().collect(),
            // No server here: deploy steps fail saying they need one.
            deployer: None,
        };
        slipway_engine::run(&plan, options, sink).await
    })?;
    // Steps may leave nothing running behind: don't wait for stray blocking tasks.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match output {
        Output::Terminal(printer) => printer.summary(&report),
        Output::Json(printer) => printer.report(&report),
    }
    Ok(match report.status {
        Status::Success => ExitCode::SUCCESS,
        Status::Killed => ExitCode::from(130),
        _ => ExitCode::from(1),
    })
}

enum Output {
    Terminal(Arc<TerminalPrinter>),
    Json(Arc<JsonPrinter>),
}

fn toplevel(dir: &std::path::Path) -> Result<PathBuf> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .context("cannot run git: is it installed?")?;
    if !out.status.success() {
        bail!(
            "git rev-parse failed in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

/// Keeps only the named pipelines (and forgets dependencies on the others).
fn select_pipelines(plan: &mut Plan, names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    for name in names {
        if !plan.pipelines.iter().any(|p| &p.name == name) {
            let known: Vec<&str> = plan.pipelines.iter().map(|p| p.name.as_str()).collect();
            bail!(
                "no pipeline named `{name}` (the file has: {})",
                known.join(", ")
            );
        }
    }
    plan.pipelines.retain(|p| names.contains(&p.name));
    for p in &mut plan.pipelines {
        p.depends_on.retain(|d| names.contains(d));
    }
    Ok(())
}
