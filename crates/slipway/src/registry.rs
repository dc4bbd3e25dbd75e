//! `slipway registry`: the built-in image registry served alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use slipway_registry::{
    Notifier, NotifyEndpoint, Registry, RegistryConfig, RepoPattern, StaticAuthenticator,
};

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:5000", env = "SLIPWAY_LISTEN")]
    pub listen: SocketAddr,
    /// Data directory; the registry lives in its `registry/` subdirectory.
    #[arg(long, default_value = "./slipway-data", env = "SLIPWAY_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Password of user `admin` (every permission): `docker login -u admin -p TOKEN`.
    #[arg(long, env = "SLIPWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// A robot account that may pull and push below one namespace: NAME:TOKEN:NAMESPACE.
    #[arg(long = "robot", value_name = "NAME:TOKEN:NAMESPACE")]
    pub robots: Vec<String>,
    /// Repositories anyone may pull: `*`, `NAMESPACE/*` or a repository name.
    #[arg(long = "anonymous-pull", value_name = "PATTERN")]
    pub anonymous_pull: Vec<String>,
    /// URL clients reach the registry at, for the token realm (default: the Host header).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Webhook to POST push/delete events to, in distribution's notification format
    /// (retried with backoff, 5 attempts); repeatable.
    #[arg(long = "notify", value_name = "URL")]
    pub notify: Vec<String>,
    /// Where blob content goes (default: `registry/blobs` in the data directory):
    /// `s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION]`, path-style, with the keys in
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Metadata stays in the data directory.
    #[cfg(feature = "s3")]
    #[arg(long, value_name = "URL", env = "SLIPWAY_REGISTRY_STORAGE")]
    pub storage: Option<String>,
    #[command(flatten)]
    pub limits: crate::up::ListenerArgs,
}

pub fn run(args: RegistryArgs) -> Result<ExitCode> {
    if args.admin_token.len() < 16 {
        bail!(
            "--admin-token must be at least 16 characters (use a random token, e.g. `openssl rand -hex 32`)"
        );
    }
    let mut auth = StaticAuthenticator::new().with_admin(&args.admin_token);
    for robot in &args.robots {
        let mut parts = robot.splitn(3, ':');
        let (Some(name), Some(token), Some(namespace)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("--robot `{robot}` must be NAME:TOKEN:NAMESPACE");
        };
        auth = auth.with_robot(name, token, namespace);
    }
    let mut config = RegistryConfig::new(args.data_dir.join("registry"));
    config.anonymous_pull = args
        .anonymous_pull
        .iter()
        .map(|p| RepoPattern::parse(p))
        .collect();
    for url in &args.notify {
        if !url.starts_with("http://") {
            bail!("--notify `{url}` must be an http:// URL");
        }
    }
    config.public_url = args.public_url.clone();
    #[cfg(feature = "s3")]
    if let Some(url) = &args.storage {
        let key = |name: &str| std::env::var(name).unwrap_or_default();
        let s3 = slipway_registry::storage::s3::S3Config::from_url(
            url,
            &key("AWS_ACCESS_KEY_ID"),
            &key("AWS_SECRET_ACCESS_KEY"),
        )
        .context("--storage")?;
        config.storage = slipway_registry::storage::StorageConfig::S3(s3);
    }
    let registry = Registry::open(config, Arc::new(auth))
        .with_context(|| format!("opening the registry in {}", args.data_dir.display()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let limits = crate::up::listener_limits(&args.limits)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        println!("slipway registry listening on http://{addr}");
        let source = args
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let _notifier = Notifier::spawn(
            registry.subscribe(),
            args.notify.iter().map(NotifyEndpoint::new).collect(),
            source,
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        slipway_server::listen::serve(listener, registry.router(), limits, shutdown).await;
        Ok(ExitCode::SUCCESS)
    })
}
