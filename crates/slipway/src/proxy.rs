//! `slipway proxy`: the edge proxy's commands. With no subcommand it serves plain HTTP
//! (`--http ADDR`) from a routes file (`--routes FILE`), watched and applied live: a
//! broken file is reported at FILE:LINE:COL and the previous routes keep serving. The
//! subcommands read routes the way the proxy does, without serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// The routes a running `slipway up` serves: host, path, source, TLS, and each
    /// backend's state and in-flight requests (`GET /api/proxy/routes`).
    Routes {
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
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

/// `slipway proxy` with no subcommand: serve.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where plain HTTP is served.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:80")]
    pub http: SocketAddr,
    /// The routes file, watched and applied live (no file: every host gets 404).
    #[arg(long, value_name = "FILE")]
    pub routes: Option<PathBuf>,
    /// Peers whose X-Forwarded-* and X-Real-IP headers are kept (a comma list of CIDRs,
    /// e.g. a load balancer in front); everyone else's are replaced.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Time a client has to send a request's headers (then the connection is closed).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// A client connection with no request open for this long is closed.
    #[arg(long, value_name = "DURATION", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time to open a connection to a backend before another is tried.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// How long a backend removed from the routes keeps its in-flight requests and
    /// WebSockets.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Client connections served at once; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,
    /// How a backend is picked within a backend set.
    #[arg(long, value_enum, default_value = "round-robin")]
    pub balance: BalanceArg,
    /// The access log, JSON lines: a file (appended to), or `-` for stderr.
    #[arg(long, value_name = "FILE|-")]
    pub access_log: Option<PathBuf>,
    /// Route the local Docker engine's containers by their labels (Traefik v1-v3,
    /// nginx-proxy's VIRTUAL_HOST, slipway.proxy.*), followed live.
    #[arg(long)]
    pub docker_labels: bool,
    #[command(flatten)]
    pub docker: DockerArgs,
    /// Threads serving traffic, each with its own event loop and backend connections
    /// (default: one per core).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Serve `GET /metrics` (Prometheus) on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// How the Docker provider reaches containers (`slipway proxy`, `slipway up`).
#[derive(Debug, Args)]
pub struct DockerArgs {
    /// A network to reach containers on before their others (repeatable), as Traefik's
    /// `providers.docker.network`.
    #[arg(long = "docker-network", value_name = "NAME")]
    pub networks: Vec<String>,
    /// Reach containers at their published ports on 127.0.0.1 (rootless Docker, a proxy
    /// that is not on the engine's host network).
    #[arg(long)]
    pub docker_published_ports: bool,
}

impl DockerArgs {
    pub fn options(&self) -> slipway_proxy::docker::DockerOptions {
        slipway_proxy::docker::DockerOptions {
            networks: self.networks.clone(),
            reach: if self.docker_published_ports {
                slipway_proxy::docker::Reach::PublishedPorts
            } else {
                slipway_proxy::docker::Reach::Networks
            },
            ..slipway_proxy::docker::DockerOptions::default()
        }
    }
}

/// `--access-log FILE|-`.
pub fn access_log_target(
    path: Option<&PathBuf>,
) -> Option<slipway_proxy::observe::AccessLogTarget> {
    use slipway_proxy::observe::AccessLogTarget;
    path.map(|p| {
        if p.as_os_str() == "-" {
            AccessLogTarget::Stderr
        } else {
            AccessLogTarget::File(p.clone())
        }
    })
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BalanceArg {
    /// Weighted round robin.
    RoundRobin,
    /// The less loaded of two random backends (power of two choices).
    LeastRequests,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    slipway_proxy::route::parse_duration(text)
}

pub fn run(command: Option<ProxyCommand>, serve_args: ServeArgs) -> Result<ExitCode> {
    match command {
        Some(ProxyCommand::RoutesFrom(args)) => routes_from(args),
        Some(ProxyCommand::Check(args)) => check(args),
        Some(ProxyCommand::Routes { api }) => crate::client::proxy_routes(api),
        None => serve(serve_args),
    }
}

impl ServeArgs {
    /// The proxy's limits and choices from the flags.
    fn proxy_config(&self) -> Result<slipway_proxy::Config> {
        let trusted_proxies = trusted_proxies(&self.trusted_proxies, "--trusted-proxies")?;
        Ok(slipway_proxy::Config {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            connect_timeout: self.connect_timeout,
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
            trusted_proxies,
            balance: match self.balance {
                BalanceArg::RoundRobin => slipway_proxy::Balance::RoundRobin,
                BalanceArg::LeastRequests => slipway_proxy::Balance::LeastRequests,
            },
        })
    }
}

/// `--trusted-proxies` (or `flag`) as CIDRs.
pub fn trusted_proxies(list: &[String], flag: &str) -> Result<Vec<slipway_proxy::Cidr>> {
    list.iter()
        .map(|c| slipway_proxy::Cidr::parse(c).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
        .collect()
}

/// The flags that name each listener, for the caller's messages.
#[derive(Debug, Clone, Copy)]
pub struct EdgeFlags {
    pub http: &'static str,
    pub https: &'static str,
    pub routes: &'static str,
}

/// Starts the edge; errors say which flag to change, with a hint.
pub async fn start_edge(
    config: slipway_proxy::EdgeConfig,
    flags: EdgeFlags,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<slipway_proxy::Edge> {
    use slipway_proxy::edge::Listener;
    match slipway_proxy::Edge::start(config, shutdown).await {
        Ok(edge) => Ok(edge),
        Err(slipway_proxy::EdgeError::Bind {
            listener,
            addr,
            source,
        }) => {
            let (flag, example) = match listener {
                Listener::Http => (flags.http, "127.0.0.1:8000"),
                Listener::Https => (flags.https, "127.0.0.1:8443"),
                Listener::Metrics => ("--metrics", "127.0.0.1:9100"),
            };
            bail!(
                "cannot listen on {addr} for {flag}: {source}; \
                 pick a free port you may bind, e.g. {flag} {example}"
            )
        }
        Err(e @ slipway_proxy::EdgeError::AccessLog { .. }) => {
            bail!("{e}; give a file you may write, or `-` for stderr")
        }
        Err(slipway_proxy::EdgeError::RoutesFile { path, diagnostics }) => {
            diagnostics.iter().for_each(|d| eprintln!("{d}"));
            bail!(
                "{} (given to {}) has errors (above): fix them, or check it with `slipway proxy check {}`",
                path.display(),
                flags.routes,
                path.display()
            )
        }
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode> {
    let config = slipway_proxy::EdgeConfig {
        http: Some(args.http),
        routes_file: args.routes.clone(),
        access_log: access_log_target(args.access_log.as_ref()),
        metrics: args.metrics,
        docker: args.docker_labels.then(|| args.docker.options()),
        workers: args
            .workers
            .unwrap_or_else(|| slipway_proxy::EdgeConfig::default().workers),
        proxy: args.proxy_config()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let flags = EdgeFlags {
            http: "--http",
            https: "--https",
            routes: "--routes",
        };
        let edge = start_edge(config, flags, shutdown.clone()).await?;
        if let Some(addr) = edge.http_addr() {
            println!("slipway proxy listening on http://{addr}");
        }
        if let Some(addr) = edge.metrics_addr() {
            println!("metrics on http://{addr}/metrics");
        }
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        edge.wait().await;
        Ok(ExitCode::SUCCESS)
    })
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
