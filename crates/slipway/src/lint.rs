//! `slipway lint`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::build_args::{find_pipeline_file, read_pipeline_file};

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Pipeline file (default: .slipway.yml, then .drone.yml).
    pub file: Option<PathBuf>,
    /// Print the problems as a JSON array.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: LintArgs) -> Result<ExitCode> {
    let path = find_pipeline_file(args.file.as_deref())?;
    let text = read_pipeline_file(&path)?;
    let diagnostics = slipway_spec::lint(&text);
    let shown = path.display().to_string();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diagnostics)?);
    } else {
        for d in &diagnostics {
            println!("{}", d.render(&shown));
        }
    }
    Ok(if diagnostics.iter().any(|d| d.is_error()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
