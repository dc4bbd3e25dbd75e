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
    /// Uploaded certificates: `cert add HOST --cert FULLCHAIN --key KEY`, `cert rm HOST`,
    /// `cert ls`; a running proxy on the data dir picks changes up within seconds.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The routes a running `slipway up` serves: host, path, source, TLS, and each
    /// backend's state and in-flight requests (`GET /api/proxy/routes`).
    Routes {
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Upload a certificate for HOST (exact, `*.example.com`, or an IP address): the full
    /// chain and its key, as PEM. Checked: the key matches, the certificate names HOST and
    /// is valid now.
    Add {
        host: String,
        #[arg(long, value_name = "FULLCHAIN")]
        cert: PathBuf,
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[arg(long, value_name = "DIR", env = "SLIPWAY_PROXY_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Remove the uploaded certificate of HOST.
    Rm {
        host: String,
        #[arg(long, value_name = "DIR", env = "SLIPWAY_PROXY_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// List the uploaded certificates.
    Ls {
        #[arg(long, value_name = "DIR", env = "SLIPWAY_PROXY_DATA_DIR")]
        data_dir: PathBuf,
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
    /// Where HTTPS is served (needs --data-dir, which holds the certificates).
    #[arg(long, value_name = "ADDR")]
    pub https: Option<SocketAddr>,
    /// The proxy's data: certificates (`certs/`, `acme/`), the last routes (`proxy/`), the
    /// instance lock and the takeover socket.
    #[arg(long, value_name = "DIR", env = "SLIPWAY_PROXY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Take the listeners over from the proxy running on --data-dir: it stops accepting,
    /// finishes its requests and exits; no request fails.
    #[arg(long, requires = "data_dir")]
    pub takeover: bool,
    #[command(flatten)]
    pub acme: AcmeArgs,
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

/// ACME (`slipway proxy`, `slipway up`).
#[derive(Debug, Args)]
pub struct AcmeArgs {
    /// The ACME account's contact, for expiry notices.
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// The ACME directory (default: Let's Encrypt).
    #[arg(long, value_name = "URL", conflicts_with = "acme_staging")]
    pub acme_directory: Option<String>,
    /// Let's Encrypt's staging directory (untrusted certificates, high rate limits).
    #[arg(long)]
    pub acme_staging: bool,
    /// A PEM root to trust for the directory itself (a private CA); then the only one.
    #[arg(long, value_name = "FILE")]
    pub acme_ca_root: Option<PathBuf>,
    /// How a host is proven: http-01 (on the HTTP listener) or tls-alpn-01 (on HTTPS).
    #[arg(long, value_name = "KIND", default_value = "http-01")]
    pub acme_challenge: String,
    /// Order no certificate: serve uploaded ones only.
    #[arg(long, conflicts_with_all = ["acme_email", "acme_directory", "acme_staging", "acme_ca_root"])]
    pub no_acme: bool,
}

impl AcmeArgs {
    pub fn options(&self) -> Result<Option<slipway_proxy::acme::AcmeOptions>> {
        use slipway_proxy::acme::{AcmeOptions, ChallengeKind, LETS_ENCRYPT_STAGING};
        if self.no_acme {
            return Ok(None);
        }
        let challenge = ChallengeKind::parse(&self.acme_challenge)
            .map_err(|e| anyhow::anyhow!("--acme-challenge: {e}"))?;
        let defaults = AcmeOptions::default();
        Ok(Some(AcmeOptions {
            contact_email: self.acme_email.clone(),
            directory_url: match (&self.acme_directory, self.acme_staging) {
                (Some(url), _) => url.clone(),
                (None, true) => LETS_ENCRYPT_STAGING.to_owned(),
                (None, false) => defaults.directory_url.clone(),
            },
            extra_root: self.acme_ca_root.clone(),
            challenge,
            ..defaults
        }))
    }
}

/// The port plain HTTP redirects to: the HTTPS listener's, or 443 when it is picked at
/// start (port 0) or absent.
pub fn https_port(https: Option<SocketAddr>) -> u16 {
    https.map(|a| a.port()).filter(|p| *p != 0).unwrap_or(443)
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
        Some(ProxyCommand::Cert(command)) => cert(command),
        None => serve(serve_args),
    }
}

impl ServeArgs {
    /// The proxy's limits and choices from the flags.
    fn proxy_config(&self) -> Result<slipway_proxy::Config> {
        let trusted_proxies = trusted_proxies(&self.trusted_proxies, "--trusted-proxies")?;
        Ok(slipway_proxy::Config {
            https_port: https_port(self.https),
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
        Err(e @ slipway_proxy::EdgeError::NoDataDir { .. }) => {
            bail!("{e}: give --data-dir DIR")
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
        Err(e) => Err(anyhow::Error::new(e)),
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
        https: args.https,
        acme: match args.https {
            Some(_) => args.acme.options()?,
            None => None,
        },
        data_dir: args.data_dir.clone(),
        takeover: args.takeover,
        drain_timeout: Some(args.drain_timeout),
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
        if let Some(addr) = edge.https_addr() {
            println!("https on {addr}");
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
        if edge.handed_over() {
            tracing::info!("handed over to the new instance; its requests finished");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `HOST  until 2027-03-01T00:00:00Z  issuer CN=…  serial …  names a, b`.
fn cert_line(host: &str, info: &slipway_proxy::tls::CertInfo) -> String {
    format!(
        "{host}  until {}  issuer {}  serial {}  names {}",
        humantime::format_rfc3339_seconds(info.not_after),
        info.issuer,
        info.serial,
        info.names.join(", ")
    )
}

fn cert(command: CertCommand) -> Result<ExitCode> {
    let open = |dir: &PathBuf| {
        slipway_proxy::CertStore::open(dir)
            .with_context(|| format!("the certificates under {}", dir.display()))
    };
    match command {
        CertCommand::Add {
            host,
            cert,
            key,
            data_dir,
        } => {
            let chain = std::fs::read(&cert)
                .with_context(|| format!("cannot read --cert {}", cert.display()))?;
            let key_pem = std::fs::read(&key)
                .with_context(|| format!("cannot read --key {}", key.display()))?;
            let info = open(&data_dir)?
                .add_uploaded(&host, &chain, &key_pem)
                .with_context(|| format!("the certificate for {host} is refused"))?;
            println!("{}", cert_line(&host, &info));
            Ok(ExitCode::SUCCESS)
        }
        CertCommand::Rm { host, data_dir } => {
            if open(&data_dir)?.remove_uploaded(&host)? {
                Ok(ExitCode::SUCCESS)
            } else {
                bail!(
                    "no uploaded certificate for {host} under {}",
                    data_dir.display()
                )
            }
        }
        CertCommand::Ls { data_dir } => {
            for (host, info) in open(&data_dir)?.uploaded() {
                println!("{}", cert_line(&host, &info));
            }
            Ok(ExitCode::SUCCESS)
        }
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
