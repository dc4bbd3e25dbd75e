//! `slipway proxy`: the edge proxy's commands. Serving traffic comes with the proxy's data
//! plane; for now the commands read routes the way the proxy will.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use slipway_proxy::compose::RoutesReport;
use slipway_proxy::{Diagnostic, Route, RouteTable};

#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Print the routes a compose or stack file's labels and environments give (Traefik
    /// v1-v3, nginx-proxy, slipway.proxy.*), with no containers.
    RoutesFrom(RoutesFromArgs),
    /// Check a routes file (`--routes FILE`); prints its routes, or FILE:LINE:COL errors.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct RoutesFromArgs {
    /// A docker-compose or stack file.
    pub file: PathBuf,
    /// A variable for `${VAR}` in the file, over the environment's and the `.env` file's
    /// beside FILE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Print routes, conflicts and diagnostics as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The routes file.
    pub file: PathBuf,
    /// Print the routes (or the errors) as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: ProxyCommand) -> Result<ExitCode> {
    match command {
        ProxyCommand::RoutesFrom(args) => routes_from(args),
        ProxyCommand::Check(args) => check(args),
    }
}

fn routes_from(args: RoutesFromArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    // As `docker compose` does: the file's `.env`, then the environment over it, then
    // `--env` over both.
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut env_problems = Vec::new();
    let dot_env = args
        .file
        .parent()
        .map_or_else(|| PathBuf::from(".env"), |d| d.join(".env"));
    if let Ok(text) = std::fs::read_to_string(&dot_env) {
        let (file_vars, problems) =
            slipway_proxy::compose::parse_env_file(&text, &dot_env.display().to_string());
        vars = file_vars;
        env_problems = problems;
    }
    vars.extend(std::env::vars());
    for pair in &args.env {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--env {pair}: write KEY=VALUE");
        };
        vars.insert(k.to_owned(), v.to_owned());
    }
    let shown = args.file.display().to_string();
    let mut report = slipway_proxy::compose::routes_from(&text, &shown, &vars);
    env_problems.append(&mut report.diagnostics);
    report.diagnostics = env_problems;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(exit_code(&report.diagnostics))
}

fn check(args: CheckArgs) -> Result<ExitCode> {
    match slipway_proxy::file::load(&args.file) {
        Ok(set) => {
            let table = RouteTable::build([set]);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&table)?);
            } else {
                table.routes().iter().for_each(print_route);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostics) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&diagnostics)?);
            } else {
                diagnostics.iter().for_each(|d| eprintln!("{d}"));
            }
            Ok(exit_code(&diagnostics))
        }
    }
}

fn exit_code(diagnostics: &[Diagnostic]) -> ExitCode {
    if diagnostics.iter().any(Diagnostic::is_error) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Routes on stdout (one line each), problems on stderr.
fn print_report(report: &RoutesReport) {
    report.routes.iter().for_each(print_route);
    for c in &report.conflicts {
        eprintln!("conflict: {c}");
    }
    for d in &report.diagnostics {
        eprintln!("{d}");
    }
}

/// `HOST/PATH -> ADDR*WEIGHT, ... tls=acme http=redirect (labels of service web, router web)`.
fn print_route(r: &Route) {
    let sets: Vec<String> = r
        .backend_sets
        .iter()
        .map(|s| {
            let backends: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{}*{}", b.address, b.weight))
                .collect();
            if r.backend_sets.len() > 1 {
                format!("{}={}:[{}]", s.name, s.weight, backends.join(", "))
            } else {
                backends.join(", ")
            }
        })
        .collect();
    let tls = match &r.tls {
        slipway_proxy::Tls::Acme => "acme".to_owned(),
        slipway_proxy::Tls::Off => "off".to_owned(),
        slipway_proxy::Tls::Certificate(name) => format!("certificate {name}"),
    };
    let origin = r
        .origin
        .as_deref()
        .map(|o| format!(", {o}"))
        .unwrap_or_default();
    println!(
        "{} -> {} tls={tls} http={} ({}{origin})",
        r.key,
        sets.join(" + "),
        serde_json::to_value(r.options.http)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        r.source,
    );
}
