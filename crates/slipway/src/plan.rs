//! `slipway plan`: what a build would run, as JSON (`--json`) or a short tree.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use slipway_spec::{BuildContext, Compiled};

use crate::build_args::{BuildArgs, find_pipeline_file, read_pipeline_file, repo_dir_of};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Pipeline file (default: .slipway.yml, then .drone.yml).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub build: BuildArgs,
    /// Print the plan as JSON (schema in the README).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PlanArgs) -> Result<ExitCode> {
    let path = find_pipeline_file(args.file.as_deref())?;
    let ctx = args.build.context(&repo_dir_of(&path))?;
    let compiled = compile_file(&path, &ctx)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&compiled.plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    for p in &compiled.plan.pipelines {
        let mark = if p.skipped { " (skipped)" } else { "" };
        println!("pipeline {} [{}]{mark}", p.name, p.kind.as_str());
        for s in &p.steps {
            let mark = if s.skipped { " (skipped)" } else { "" };
            let deps = if s.depends_on.is_empty() {
                String::new()
            } else {
                format!(" after {}", s.depends_on.join(", "))
            };
            println!("  step {}: {}{deps}{mark}", s.name, s.image);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads and compiles a pipeline file, printing warnings to stderr and failing with every
/// error when there is one.
pub fn compile_file(path: &Path, ctx: &BuildContext) -> Result<Compiled> {
    let text = read_pipeline_file(path)?;
    let shown = path.display().to_string();
    match slipway_spec::compile(&text, ctx) {
        Ok(compiled) => {
            for w in &compiled.warnings {
                eprintln!("{}", w.render(&shown));
            }
            Ok(compiled)
        }
        Err(diagnostics) => {
            for d in &diagnostics {
                eprintln!("{}", d.render(&shown));
            }
            let errors = diagnostics.iter().filter(|d| d.is_error()).count();
            bail!("{shown} has {errors} error(s); `slipway lint {shown}` shows them all")
        }
    }
}
