//! `slipway up`, `slipway server` and `slipway runner`: the server with an embedded runner,
//! the server alone, and a runner alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use slipway_server::app::Server;
use slipway_server::config::ServerConfig;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on (port 0 picks a free port; the URL is printed).
    #[arg(long, default_value = "0.0.0.0:8080", env = "SLIPWAY_LISTEN")]
    pub listen: SocketAddr,
    /// Data directory: database, logs, mirrors, registry, keys.
    #[arg(long, default_value = "./slipway-data", env = "SLIPWAY_DATA_DIR")]
    pub data_dir: PathBuf,
    /// `postgres://user:pass@host/db` to use PostgreSQL instead of SQLite in the data dir.
    #[arg(long, env = "SLIPWAY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The URL users and git hosts reach this server at (default: from --listen).
    #[arg(long, env = "SLIPWAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The admin token (default: generated on first start and printed once). Prefer
    /// --admin-token-file or the environment: a flag's value shows in the process list.
    #[arg(long, env = "SLIPWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding the admin token (its first line), instead of --admin-token.
    #[arg(
        long,
        env = "SLIPWAY_ADMIN_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` on /metrics (default: open, as Prometheus expects).
    #[arg(
        long,
        env = "SLIPWAY_METRICS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub metrics_token: Option<String>,
    /// How long a web UI session lasts after logging in, e.g. 12h (default: 7 days).
    #[arg(long, default_value = "168h", value_parser = parse_duration)]
    pub session_ttl: Duration,
    #[command(flatten)]
    pub limits: ListenerArgs,
    /// The token runners register with (default: generated and kept in the data dir).
    #[arg(long, env = "SLIPWAY_RUNNER_TOKEN", hide_env_values = true)]
    pub runner_token: Option<String>,
    /// Lease of a stage without heartbeat, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Registry repositories anyone may pull: `*`, `NAMESPACE/*` or a name (repeatable).
    #[arg(long = "registry-anonymous-pull", value_name = "PATTERN")]
    pub registry_anonymous_pull: Vec<String>,
    /// A webhook for the registry's push/delete events, distribution's format (repeatable).
    #[arg(long = "registry-notify", value_name = "URL")]
    pub registry_notify: Vec<String>,
    /// Run `plugins/docker` steps as ordinary containers instead of natively.
    #[arg(long)]
    pub no_native_plugins: bool,
    /// The API base of a notification kind, KIND=URL (repeatable), e.g.
    /// `wechat-work=http://127.0.0.1:9000`: for the server's channels and (`slipway up`) the
    /// embedded runner's native notification steps. A channel's own `api_base` wins.
    #[arg(long = "notify-api", value_name = "KIND=URL", value_parser = parse_notify_api)]
    pub notify_api: Vec<(slipway_engine::NotifyKind, String)>,
    /// Forward service logs to URI, as logspout's `ROUTE_URIS` (repeatable; a
    /// comma-separated list in the variable): `syslog+tcp://HOST:514`, `relp://HOST:2514`,
    /// `loki+http://HOST:3100`, … Routes added with `slipway logs route add` are kept too.
    #[arg(
        long = "log-route",
        value_name = "URI",
        env = "ROUTE_URIS",
        value_delimiter = ','
    )]
    pub log_routes: Vec<String>,
    /// How long and how much service logs are kept, `[ENV=]AGE[,SIZE]` (repeatable):
    /// `14d,2GiB` for every environment, `staging=2d` for one (default 7d and 1 GiB per
    /// service).
    #[arg(long = "log-retention", value_name = "[ENV=]AGE[,SIZE]")]
    pub log_retention: Vec<String>,
    /// Do not collect containers' logs.
    #[arg(long)]
    pub no_service_logs: bool,
    /// Print the start-up facts (url, admin token, runner token) as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// The limits of a listener (`slipway up`, `server`, `registry`).
#[derive(Debug, Args)]
pub struct ListenerArgs {
    /// A request's headers must arrive within this (slow or stalled clients are cut off).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// A connection that moves no byte for this long is closed (more than 30 s: runners'
    /// polls wait up to 25 s).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Stages the embedded runner runs at once.
    #[arg(long, default_value_t = 2)]
    pub capacity: u32,
    /// A label of the embedded runner, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Let the embedded runner run `type: exec` pipelines of trusted builds: their commands
    /// run directly on this host, as this process's user (root, next to the data dir).
    #[arg(long)]
    pub runner_allow_exec: bool,
    #[command(flatten)]
    pub proxy: UpProxyArgs,
}

/// The edge proxy of `slipway up`.
#[derive(Debug, Args)]
pub struct UpProxyArgs {
    /// Where the edge proxy serves plain HTTP to the team's apps.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:80")]
    pub proxy_http: SocketAddr,
    /// Where the edge proxy serves HTTPS (certificates uploaded with `slipway proxy cert
    /// add` or ordered by ACME for `tls: acme` routes).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:443")]
    pub proxy_https: SocketAddr,
    #[command(flatten)]
    pub acme: crate::proxy::AcmeArgs,
    /// Take over from the `slipway up` running on this data dir: its proxy's and API's
    /// listening sockets pass to this one, which serves the proxy's routes at once; the old
    /// one finishes its requests and exits, then this one opens the store.
    #[arg(long)]
    pub takeover: bool,
    /// A routes file for the proxy, watched and applied live.
    #[arg(long, value_name = "FILE")]
    pub proxy_routes: Option<PathBuf>,
    /// Peers whose X-Forwarded-* and X-Real-IP headers the proxy keeps (CIDRs).
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub proxy_trusted_proxies: Vec<String>,
    /// The proxy's access log, JSON lines: a file (appended to), or `-` for stderr.
    #[arg(long, value_name = "FILE|-")]
    pub proxy_access_log: Option<PathBuf>,
    /// Do not route the local Docker engine's containers by their labels.
    #[arg(long)]
    pub no_docker_labels: bool,
    #[command(flatten)]
    pub docker: crate::proxy::DockerArgs,
    /// Run no edge proxy.
    #[arg(long, conflicts_with_all = ["proxy_http", "proxy_https", "proxy_routes", "takeover"])]
    pub no_proxy: bool,
}

impl UpProxyArgs {
    fn edge_config(&self, data_dir: &std::path::Path) -> Result<Option<slipway_proxy::EdgeConfig>> {
        if self.no_proxy {
            return Ok(None);
        }
        let proxy = slipway_proxy::Config {
            trusted_proxies: crate::proxy::trusted_proxies(
                &self.proxy_trusted_proxies,
                "--proxy-trusted-proxies",
            )?,
            https_port: crate::proxy::https_port(Some(self.proxy_https)),
            ..slipway_proxy::Config::default()
        };
        Ok(Some(slipway_proxy::EdgeConfig {
            http: Some(self.proxy_http),
            routes_file: self.proxy_routes.clone(),
            access_log: crate::proxy::access_log_target(self.proxy_access_log.as_ref()),
            metrics: None,
            docker: (!self.no_docker_labels).then(|| self.docker.options()),
            https: Some(self.proxy_https),
            acme: self.acme.options()?,
            data_dir: Some(data_dir.to_owned()),
            takeover: self.takeover,
            proxy,
            ..slipway_proxy::EdgeConfig::default()
        }))
    }
}

#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// The server's URL.
    #[arg(long, env = "SLIPWAY_SERVER")]
    pub server: String,
    /// The runner token (`slipway server` prints it).
    #[arg(long, env = "SLIPWAY_RUNNER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// This runner's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Stages run at once.
    #[arg(long, default_value_t = 2)]
    pub capacity: u32,
    /// A label, KEY=VALUE (repeatable): stages asking for labels only run where all match.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Where workspaces are made.
    #[arg(long, env = "SLIPWAY_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Run `type: exec` pipelines of trusted builds: their commands run directly on this
    /// host, as this runner's user. Off: the server never leases them here.
    #[arg(long)]
    pub allow_exec: bool,
    /// The API base of a notification kind for native notification steps, KIND=URL
    /// (repeatable), e.g. `wechat-work=http://127.0.0.1:9000`.
    #[arg(long = "notify-api", value_name = "KIND=URL", value_parser = parse_notify_api)]
    pub notify_api: Vec<(slipway_engine::NotifyKind, String)>,
}

/// One `--notify-api KIND=URL`.
pub fn parse_notify_api(text: &str) -> Result<(slipway_engine::NotifyKind, String), String> {
    slipway_engine::parse_notify_api(text).map_err(|e| e.to_string())
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    slipway_spec::parse::parse_duration(text)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is not a duration (e.g. 30s, 2m)"))
}

/// The admin token of `--admin-token-file`: its first line, which must not be empty.
fn read_token_file(file: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--admin-token-file {}: reading it", file.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        bail!(
            "--admin-token-file {}: the first line is empty; write the token there (e.g. `openssl rand -hex 32 > {}`)",
            file.display(),
            file.display()
        );
    }
    Ok(token)
}

/// The listener limits of the flags, checked against each other.
pub fn listener_limits(args: &ListenerArgs) -> Result<slipway_server::config::ListenerLimits> {
    let limits = slipway_server::config::ListenerLimits {
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
    };
    if limits.header_read_timeout.is_zero() || limits.max_connections == 0 {
        bail!("--header-read-timeout and --max-connections must be more than 0");
    }
    // Runners' long polls are answered within the poll wait: an idle timeout shorter than
    // it would cut every waiting runner off.
    let poll = ServerConfig::new(".", "").poll_wait;
    if limits.idle_timeout <= poll + Duration::from_secs(5) {
        bail!(
            "--idle-timeout {}s is too short: runners wait up to {}s for work on one request; give at least {}s",
            limits.idle_timeout.as_secs(),
            poll.as_secs(),
            (poll + Duration::from_secs(6)).as_secs()
        );
    }
    Ok(limits)
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--label `{l}` must be KEY=VALUE");
        };
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::warn!("shutting down");
        t.cancel();
    });
    token
}

pub fn up(args: UpArgs) -> Result<ExitCode> {
    let embedded = EmbeddedRunner {
        capacity: args.capacity,
        labels: parse_labels(&args.labels)?,
        allow_exec: args.runner_allow_exec,
        notify_api: args.server.notify_api.iter().cloned().collect(),
    };
    let edge = args.proxy.edge_config(&args.server.data_dir)?;
    serve(args.server, Some(embedded), edge)
}

/// What `slipway up` asks of its embedded runner.
#[derive(Debug)]
struct EmbeddedRunner {
    capacity: u32,
    labels: BTreeMap<String, String>,
    allow_exec: bool,
    notify_api: BTreeMap<slipway_engine::NotifyKind, String>,
}

pub fn server(args: ServerArgs) -> Result<ExitCode> {
    serve(args, None, None)
}

fn serve(
    args: ServerArgs,
    embedded: Option<EmbeddedRunner>,
    edge: Option<slipway_proxy::EdgeConfig>,
) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        // A signal stops everything; a handover to a successor stops the server at once
        // and lets the proxy drain.
        let shutdown = shutdown_on_signal();
        let server_stop = shutdown.child_token();
        // The proxy's ports are bound (or taken over) before anything else opens, so a
        // taken port or another instance on the data dir is the first thing said.
        let edge = match edge {
            Some(config) => {
                let flags = crate::proxy::EdgeFlags {
                    http: "--proxy-http",
                    https: "--proxy-https",
                    routes: "--proxy-routes",
                };
                Some(std::sync::Arc::new(
                    crate::proxy::start_edge(config, flags, shutdown.clone()).await?,
                ))
            }
            None => None,
        };
        let listener = match edge.as_ref().and_then(|e| e.take_listener("api")) {
            Some(taken) => {
                taken
                    .set_nonblocking(true)
                    .context("the API listener taken over")?;
                tokio::net::TcpListener::from_std(taken).context("the API listener taken over")?
            }
            None => tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("listening on {}", args.listen))?,
        };
        let addr = listener.local_addr().context("reading the bound address")?;
        if let Some(edge) = &edge {
            edge.hand_over_also("api", &listener)?;
            if let Some(public_url) = &args.public_url {
                match slipway_proxy::edge::public_url_routes(public_url, addr) {
                    Ok(set) => edge
                        .proxy()
                        .set_provider(slipway_proxy::edge::PUBLIC_URL_PROVIDER, set),
                    Err(e) => tracing::warn!("the proxy does not serve Slipway itself: {e}"),
                }
            }
            // Never two servers on one store: on a takeover, the store opens once the
            // previous instance has gone (the proxy serves meanwhile).
            edge.holds_data_dir().await;
            let (handed, stop) = (edge.handed_over_signal(), server_stop.clone());
            tokio::spawn(async move {
                handed.cancelled().await;
                tracing::info!("handed over to a new instance: the server stops, the proxy drains");
                stop.cancel();
            });
        }
        let local = if addr.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", addr.port())
        } else {
            format!("http://{addr}")
        };
        let public_url = args.public_url.clone().unwrap_or_else(|| local.clone());
        let mut config = ServerConfig::new(&args.data_dir, public_url.clone());
        config.database_url = args.database_url.clone();
        config.admin_token = match &args.admin_token_file {
            Some(file) => Some(read_token_file(file)?),
            None => args.admin_token.clone(),
        };
        config.metrics_token = args.metrics_token.clone().filter(|t| !t.trim().is_empty());
        config.session_ttl = args.session_ttl;
        config.limits = listener_limits(&args.limits)?;
        config.runner_token = args.runner_token.clone();
        config.lease = args.lease;
        config.registry_anonymous_pull = args.registry_anonymous_pull.clone();
        config.registry_notify = args.registry_notify.clone();
        config.native_plugins = !args.no_native_plugins;
        config.notify_api = args.notify_api.iter().cloned().collect();
        config.service_logs.collect = !args.no_service_logs;
        config.service_logs.routes = args.log_routes.clone();
        config.service_logs.retention = args.log_retention.clone();
        config.edge = edge.clone();
        let server = Server::open(config)
            .await
            .with_context(|| format!("opening the server's data in {}", args.data_dir.display()))?;
        server.spawn_background(server_stop.clone());

        let admin = server.first_admin_token().map(str::to_owned);
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "url": public_url,
                    "listen": addr.to_string(),
                    "admin_token": admin,
                    "runner_token": if embedded.is_none() { Some(&server.state.runner_token) } else { None },
                    "proxy_http": edge.as_ref().and_then(|e| e.http_addr()).map(|a| a.to_string()),
                    "proxy_https": edge.as_ref().and_then(|e| e.https_addr()).map(|a| a.to_string()),
                })
            );
        } else {
            println!("Slipway is up at {public_url}");
            match &admin {
                Some(token) => println!("admin token (shown once, keep it): {token}"),
                None if args.admin_token.is_some() || args.admin_token_file.is_some() => {
                    println!("admin token: as given")
                }
                None => println!("admin token: the one printed at the first start"),
            }
            if embedded.is_none() {
                println!("runner token: {}", server.state.runner_token);
            }
            println!("webhook URL for git hosts: {}/hook", public_url.trim_end_matches('/'));
            if let Some(addr) = edge.as_ref().and_then(|e| e.http_addr()) {
                println!("edge proxy: http://{addr}");
            }
            if let Some(addr) = edge.as_ref().and_then(|e| e.https_addr()) {
                println!("edge proxy: https on {addr}");
            }
        }

        let router = server.router();
        let limits = server.state.config.limits;
        let serve_shutdown = server_stop.clone();
        let http = tokio::spawn(async move {
            slipway_server::listen::serve(listener, router, limits, serve_shutdown).await;
        });

        if let Some(EmbeddedRunner {
            capacity,
            labels,
            allow_exec,
            notify_api,
        }) = embedded
        {
            let runner = slipway_runner::RunnerConfig {
                server: local.clone(),
                token: server.state.runner_token.clone(),
                name: format!("embedded@{}", hostname()),
                labels,
                capacity,
                work_root: absolute(&args.data_dir)?.join("workspaces"),
                poll_timeout: server.state.config.poll_wait,
                allow_exec,
                notify_api,
            };
            let runner_shutdown = server_stop.clone();
            tokio::spawn(async move {
                if let Err(e) = slipway_runner::run(runner, runner_shutdown).await {
                    tracing::error!("embedded runner stopped: {e}");
                }
            });
        }
        let served = http.await;
        if let Some(edge) = &edge {
            edge.wait().await;
        }
        match served {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => Err(anyhow::Error::new(e).context("the HTTP task")),
        }
    })
}

pub fn runner(args: RunnerArgs) -> Result<ExitCode> {
    let labels = parse_labels(&args.labels)?;
    let work_root = match args.work_dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join("slipway-runner"),
    };
    // A runner of one stage at a time gets one thread: it waits on the server, Docker and
    // its steps, and the threads a work-stealing runtime wakes for each of those cost more
    // CPU than the work itself (file work still goes to tokio's blocking threads). With
    // more stages at once, their log lines may need more than one core.
    let runtime = if args.capacity <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
    } else {
        runtime()?
    };
    runtime.block_on(async move {
        let shutdown = shutdown_on_signal();
        let config = slipway_runner::RunnerConfig {
            server: args.server.trim_end_matches('/').to_owned(),
            token: args.token,
            name: args.name.unwrap_or_else(hostname),
            labels,
            capacity: args.capacity.max(1),
            work_root,
            poll_timeout: Duration::from_secs(25),
            allow_exec: args.allow_exec,
            notify_api: args.notify_api.iter().cloned().collect(),
        };
        slipway_runner::run(config, shutdown)
            .await
            .context("the runner stopped")?;
        Ok(ExitCode::SUCCESS)
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "runner".to_owned())
}

fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(path))
}
