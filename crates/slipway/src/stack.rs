//! `slipway stack …`: compose stacks. `lint` checks a stack file (and the
//! `rancher-compose.yml` beside it) and `plan` shows what a deploy would do; neither needs
//! an engine. Each subcommand is a variant of [`StackCommand`] with its own args struct and
//! function, so `deploy`, `rollback` and friends are added the same way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use slipway_deploy::compose::{self, Mode, Read, ReadOptions};
use slipway_deploy::plan::{Environment, Plan};

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Check a compose/stack file; prints FILE:LINE:COL: error|warning: message, exits 1 on
    /// errors. A rancher-compose.yml beside it is read too.
    Lint(LintArgs),
    /// What a deploy of the stack would do in an environment: services, images, replicas,
    /// routes, health checks, strategies (`--json`: the schema in the README).
    Plan(PlanArgs),
    /// Deploy a stack file to an environment as a new revision: `stack deploy ENV/STACK (-f
    /// FILE | --repo REPO [--build N | --commit SHA]) [--image SERVICE=REF]… [--wait]`.
    Deploy(DeployArgs),
    /// List stacks (of every environment), with their latest revision.
    Ls(ApiOnly),
    /// A stack: its revisions and containers (service, revision, state, health).
    Show(StackRef),
    /// A stack's revisions, newest first: what caused each, its images and outcome.
    History(StackRef),
    /// Deploy an earlier revision again, exactly its images (no pull): `--to N`, default
    /// the last that succeeded before the current one.
    Rollback(RollbackArgs),
    /// Hold the running rollout at its next step (a batch, a canary weight, the bake).
    Pause(StackRef),
    /// Let a paused rollout go on.
    Resume(StackRef),
    /// Finish the running rollout now: the remaining canary steps, delays and bake skipped.
    Promote(StackRef),
    /// Stop the running rollout and put the old revision back.
    Abort(StackRef),
    /// Remove a stack: its route, its containers (drained), its history.
    Rm(StackRef),
    /// Print a new redeploy URL for the stack (POST to it deploys the current file again,
    /// tags pulled anew; `?tag=T&service=S` changes one tag). The old URL stops working.
    Webhook(StackRef),
}

pub fn run(command: StackCommand) -> Result<ExitCode> {
    match command {
        StackCommand::Lint(args) => lint(args),
        StackCommand::Plan(args) => plan(args),
        StackCommand::Deploy(args) => crate::stack_deploy::deploy(args),
        StackCommand::Ls(args) => crate::stack_deploy::ls(args),
        StackCommand::Show(args) => crate::stack_deploy::show(args),
        StackCommand::History(args) => crate::stack_deploy::history(args),
        StackCommand::Rollback(args) => crate::stack_deploy::rollback(args),
        StackCommand::Pause(args) => crate::stack_deploy::steer(args, "pause"),
        StackCommand::Resume(args) => crate::stack_deploy::steer(args, "resume"),
        StackCommand::Promote(args) => crate::stack_deploy::steer(args, "promote"),
        StackCommand::Abort(args) => crate::stack_deploy::steer(args, "abort"),
        StackCommand::Rm(args) => crate::stack_deploy::rm(args),
        StackCommand::Webhook(args) => crate::stack_deploy::webhook(args),
    }
}

#[derive(Debug, Args)]
pub struct ApiOnly {
    #[command(flatten)]
    pub api: crate::client::ApiArgs,
}

/// `ENV/STACK` and the server.
#[derive(Debug, Args)]
pub struct StackRef {
    /// `ENV/STACK`.
    pub target: String,
    #[command(flatten)]
    pub api: crate::client::ApiArgs,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// `ENV/STACK`.
    pub target: String,
    /// The compose or stack file (a rancher-compose.yml beside it is sent too).
    #[arg(
        short = 'f',
        long = "file",
        required_unless_present = "repo",
        conflicts_with = "repo"
    )]
    pub file: Option<PathBuf>,
    /// Take the stack file from this repository instead (compose.yaml, compose.yml,
    /// docker-compose.yaml, docker-compose.yml, or --path).
    #[arg(long)]
    pub repo: Option<String>,
    /// With --repo: at this build's commit, with the images it pushed.
    #[arg(long, requires = "repo", conflicts_with = "commit")]
    pub build: Option<i64>,
    /// With --repo: at this commit, branch or tag (default: the default branch).
    #[arg(long, alias = "ref", requires = "repo")]
    pub commit: Option<String>,
    /// With --repo: the stack file's path in the repository.
    #[arg(long, requires = "repo")]
    pub path: Option<String>,
    /// Rancher 1.x rancher-compose.yml (default: the one beside FILE, when present).
    #[arg(long, value_name = "FILE")]
    pub rancher: Option<PathBuf>,
    /// Deploy this image for a service instead of the file's, SERVICE=REF (repeatable).
    #[arg(long = "image", value_name = "SERVICE=REF")]
    pub images: Vec<String>,
    /// Follow the rollout, printing each step; exit 1 if it did not succeed.
    #[arg(long)]
    pub wait: bool,
    /// A stack you trust: it may mount host paths and use `external` networks and volumes.
    #[arg(long, alias = "allow-bind-mounts")]
    pub trusted: bool,
    #[command(flatten)]
    pub api: crate::client::ApiArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// `ENV/STACK`.
    pub target: String,
    /// The revision to go back to.
    #[arg(long)]
    pub to: Option<i64>,
    /// Follow the rollout; exit 1 if it did not succeed.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub api: crate::client::ApiArgs,
}

/// The stack file and its Rancher file, as every stack subcommand takes them.
#[derive(Debug, Args)]
pub struct StackFile {
    /// The compose or stack file.
    pub file: PathBuf,
    /// Rancher 1.x rancher-compose.yml (default: the one beside FILE, when present).
    #[arg(long, value_name = "FILE")]
    pub rancher: Option<PathBuf>,
}

impl StackFile {
    fn read(&self, opts: &ReadOptions) -> Result<Read> {
        if !self.file.is_file() {
            bail!("{} is not a file", self.file.display());
        }
        Ok(compose::load(&self.file, self.rancher.as_deref(), opts)?)
    }
}

#[derive(Debug, Args)]
pub struct LintArgs {
    #[command(flatten)]
    pub stack: StackFile,
    /// Print the problems as a JSON array.
    #[arg(long)]
    pub json: bool,
}

fn lint(args: LintArgs) -> Result<ExitCode> {
    let read = args.stack.read(&ReadOptions::default())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&read.problems)?);
    } else {
        for p in &read.problems {
            println!("{p}");
        }
    }
    Ok(if read.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub stack: StackFile,
    /// The environment's name.
    #[arg(long = "env", value_name = "NAME", default_value = "default")]
    pub env: String,
    /// The environment's domain: services get `SERVICE.DOMAIN` routes.
    #[arg(long, value_name = "D")]
    pub domain: Option<String>,
    /// A variable for interpolation, KEY=VALUE; repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    /// Print the plan as JSON (schema in the README).
    #[arg(long)]
    pub json: bool,
}

fn plan(args: PlanArgs) -> Result<ExitCode> {
    let mut variables = BTreeMap::new();
    for v in &args.vars {
        let Some((k, val)) = v.split_once('=') else {
            bail!("--var `{v}` must be KEY=VALUE");
        };
        if k.is_empty() {
            bail!("--var `{v}` must be KEY=VALUE");
        }
        variables.insert(k.to_owned(), val.to_owned());
    }
    let env = Environment {
        name: args.env.clone(),
        domain: args.domain.clone(),
        variables,
        secrets: BTreeMap::new(),
    };
    let opts = ReadOptions {
        vars: env.interpolation_vars(),
        mode: Mode::Strict,
        base_dir: None,
    };
    let read = args.stack.read(&opts)?;
    let shown = args.stack.file.display().to_string();
    fail_on_errors(&read, &shown)?;
    let plan = Plan::of(&read.compose, &env);
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in &plan.services {
        let replicas = match s.replicas {
            Some(n) => format!("{n} replica(s)"),
            None => "global".to_owned(),
        };
        println!(
            "service {}: {} ({replicas}, {:?} {:?})",
            s.name,
            s.image.as_deref().unwrap_or("-"),
            s.strategy.kind,
            s.strategy.order
        );
        for r in &s.routes {
            let path = r.path.as_deref().unwrap_or("");
            println!(
                "  route {}{path} → :{} (tls {}, {})",
                r.host, r.port, r.tls, r.source
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the file's warnings to stderr, and fails with every error when there is one.
fn fail_on_errors(read: &Read, shown: &str) -> Result<()> {
    for p in &read.problems {
        eprintln!("{p}");
    }
    let errors = read.problems.iter().filter(|p| p.is_error()).count();
    if errors > 0 {
        bail!("{shown} has {errors} error(s); `slipway stack lint {shown}` shows them all");
    }
    Ok(())
}
