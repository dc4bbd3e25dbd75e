//! The server as a whole: opens every part under the data dir, serves the router, and runs
//! the background tasks (lease reaper, commit statuses, notifications).
//!
//! The data dir and its `logs/`, `mirrors/` and `registry/` are made 0700, the SQLite
//! database (with its -wal and -shm), `secret.key` and `runner.token` 0600; what an older
//! version created more open is tightened at every start (but a `secret.key` others may
//! read is an error, see [`crate::secrets`]). Webhook secrets are sealed in the store; one
//! an older version kept in clear is sealed at start.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::config::ServerConfig;
use crate::events::EventBus;
use crate::logstore::LogStore;
use crate::mirror::Mirrors;
use crate::secrets::SecretBox;
use crate::status::StatusClient;
use crate::store::Store;

/// How much longer than a lease a runner has to come back after a server restart: its
/// retries back off up to 5 s, so a short lease alone could expire before the first retry.
const RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Logs(#[from] crate::logstore::LogError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
    #[error(transparent)]
    Registry(#[from] slipway_registry::RegistryError),
    #[error(transparent)]
    Notify(#[from] slipway_notify::ConfigError),
    #[error("{0}")]
    ServiceLogs(String),
    #[error(
        "the data directory: {path}: {source} (it must be a directory this user owns and may \
         write; its files are made readable by this user only)"
    )]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Shared by every handler and task.
#[derive(Debug)]
pub struct AppState {
    pub config: ServerConfig,
    pub store: Arc<Store>,
    pub logs: LogStore,
    pub mirrors: Mirrors,
    pub secrets: SecretBox,
    pub events: EventBus,
    /// Woken whenever a stage may have become ready (created, a dependency finished, a
    /// lease expired), so long-polling runners look again.
    pub queue: Notify,
    pub statuses: StatusClient,
    /// Notification channels' workers and the outbox's fan-out (see [`crate::notify`]).
    pub notify: crate::notify::Notifications,
    /// Service logs: the store, the collector, the forward routes.
    pub service_logs: Arc<crate::service_logs::ServiceLogs>,
    /// The deployer's engine connection and the stacks being rolled out (see
    /// [`crate::deploy`]).
    pub deploy: crate::deploy::Deployments,
    pub ui: crate::ui::Ui,
    pub registry: slipway_registry::Registry,
    /// The runner token (plain), for the embedded runner of `slipway up`.
    pub runner_token: String,
    /// The host part of `public_url` (`DRONE_SYSTEM_HOST`, registry host).
    pub host: String,
    /// API tokens recently checked, and registry credentials found live; every token
    /// deletion clears it (see [`auth::TokenCache`]).
    pub tokens: Arc<auth::TokenCache>,
    /// Stages holding a registry token right now (so only they pay for revoking it).
    pub tokened_stages: std::sync::Mutex<std::collections::HashSet<i64>>,
    /// When running steps started, by (stage id, step): a step's end is published with its
    /// start without reading it back. Entries go with the step's end (or the stage's).
    pub step_starts: std::sync::Mutex<std::collections::HashMap<(i64, String), i64>>,
    /// Registered runners by id, for polls (labels, last seen).
    pub runners: std::sync::Mutex<std::collections::HashMap<i64, crate::store::Runner>>,
    /// Builds this process started, as read when their first stage was leased: the parts
    /// a lease needs (number, event, ref, commit) never change, so the build's other stages
    /// are leased without reading it (or starting it) again. See [`crate::queue`].
    pub running_builds: crate::queue::Recent<crate::store::Build>,
    /// Stages this process leased, by id: who holds which attempt, so a runner's `/done`
    /// need not read the stage first (the end itself checks the lease again).
    pub leased: crate::queue::Recent<crate::queue::LeasedStage>,
}

/// An opened server.
#[derive(Debug, Clone)]
pub struct Server {
    pub state: Arc<AppState>,
    first_admin_token: Option<String>,
}

impl Server {
    /// Opens (creating when new) everything under `config.data_dir`.
    pub async fn open(config: ServerConfig) -> Result<Server, ServerError> {
        let data = config.data_dir.clone();
        private_data_dir(&data)?;
        let url = match &config.database_url {
            Some(url) => url.clone(),
            None => {
                let db = data.join("slipway.db");
                // SQLite gives its -wal and -shm files the database file's mode: create it
                // 0600 before SQLite does (an empty file is a new database).
                create_private_file(&db)?;
                format!("sqlite://{}", db.display())
            }
        };
        let store = Arc::new(Store::open(&url).await?);
        tighten_data_files(&data)?;
        let secrets = match &config.secret_key {
            Some(key) => SecretBox::from_key_text(key)?,
            None => SecretBox::load_or_create(&data.join("secret.key"))?,
        };
        seal_webhook_secrets(&store, &secrets).await?;
        let logs = LogStore::open(data.join("logs"), config.durable_logs, Some(store.clone()))?;
        let mirrors = Mirrors::new(data.join("mirrors"));

        let mut first_admin_token = None;
        match &config.admin_token {
            // A configured token replaces the one it was configured with before.
            Some(token) => {
                auth::ensure_only(&store, "admin", token, auth::SCOPE_ADMIN).await?;
            }
            None => {
                let tokens = store.tokens().await?;
                if !tokens.iter().any(|t| t.scope == auth::SCOPE_ADMIN) {
                    let token = auth::generate();
                    auth::ensure(&store, "admin", &token, auth::SCOPE_ADMIN).await?;
                    first_admin_token = Some(token);
                }
            }
        }
        let runner_token = match &config.runner_token {
            Some(token) => token.clone(),
            // Kept sealed in the data dir so the embedded runner survives restarts.
            None => stored_token(&data, &secrets, "runner.token", "runner-token")?,
        };
        auth::ensure_only(&store, "runners", &runner_token, auth::SCOPE_RUNNER).await?;

        // The deployer pulls the built-in registry's images with a token of its own.
        let deployer_token = stored_token(&data, &secrets, "deployer.token", "deployer-token")?;
        let deployer =
            auth::ensure_only(&store, "deployer", &deployer_token, auth::SCOPE_PULL).await?;
        if deployer.scope != auth::SCOPE_PULL {
            // A data dir from before: the deployer's token was an admin's; it only pulls.
            store.delete_token(deployer.id).await?;
            auth::ensure(&store, "deployer", &deployer_token, auth::SCOPE_PULL).await?;
        }

        let host = host_of(&config.public_url);
        let mut registry_config = slipway_registry::RegistryConfig::new(data.join("registry"));
        registry_config.public_url = Some(config.public_url.clone());
        registry_config.anonymous_pull = config
            .registry_anonymous_pull
            .iter()
            .map(|p| slipway_registry::RepoPattern::parse(p))
            .collect();
        let tokens = Arc::new(auth::TokenCache::default());
        let registry = slipway_registry::Registry::open(
            registry_config,
            Arc::new(auth::RegistryAuth {
                store: store.clone(),
                cache: tokens.clone(),
            }),
        )?;

        // Runners that were working when the server stopped get a full lease, plus the
        // longest retry pause of a runner, to reconnect.
        let extended = store
            .extend_running_leases(crate::now_ms() + millis(config.lease) + millis(RECONNECT_GRACE))
            .await?;
        if extended > 0 {
            tracing::info!("{extended} stages were running: waiting for their runners");
        }

        // Registry tokens of stages that were running when the server stopped stay until
        // those stages end; any others are left over from a crash and are revoked now.
        let running: std::collections::HashSet<i64> =
            store.running_stages().await?.iter().map(|s| s.id).collect();
        let mut tokened = std::collections::HashSet::new();
        for token in store.tokens().await? {
            let Some(stage) = token
                .name
                .strip_prefix("pipeline:")
                .and_then(|rest| rest.split(':').next())
                .and_then(|id| id.parse::<i64>().ok())
            else {
                continue;
            };
            if running.contains(&stage) {
                tokened.insert(stage);
            } else {
                store.delete_token(token.id).await?;
            }
        }

        let notify = crate::notify::Notifications::new(store.clone(), config.notify_api.clone())?;
        let service_logs = crate::service_logs::ServiceLogs::open(
            data.join("service-logs"),
            config.service_logs.clone(),
        )
        .map_err(ServerError::ServiceLogs)?;
        let state = Arc::new(AppState {
            config,
            store,
            notify,
            deploy: crate::deploy::Deployments::new(&host, deployer_token),
            service_logs: Arc::new(service_logs),
            logs,
            mirrors,
            secrets,
            events: EventBus::default(),
            queue: Notify::new(),
            statuses: StatusClient::new(),
            ui: crate::ui::Ui::new(),
            registry,
            runner_token,
            host,
            tokens,
            tokened_stages: std::sync::Mutex::new(tokened),
            step_starts: std::sync::Mutex::default(),
            running_builds: crate::queue::Recent::default(),
            leased: crate::queue::Recent::default(),
            runners: std::sync::Mutex::default(),
        });
        Ok(Server {
            state,
            first_admin_token,
        })
    }

    /// The admin token generated at this start, if the store had none (print it once).
    pub fn first_admin_token(&self) -> Option<&str> {
        self.first_admin_token.as_deref()
    }

    /// Every route: API, webhooks, runner protocol, UI, registry, health and metrics.
    pub fn router(&self) -> axum::Router {
        crate::api::router(self.state.clone())
    }

    /// Starts the background tasks; they stop when `shutdown` is cancelled.
    pub fn spawn_background(&self, shutdown: CancellationToken) {
        tokio::spawn(crate::queue::reap_expired_leases(
            self.state.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(crate::builds::post_commit_statuses(
            self.state.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(forward_registry_events(
            self.state.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(crate::notify::spawn(self.state.clone(), shutdown.clone()));
        self.state.service_logs.spawn(shutdown.clone());
        // The rules start once every stack is recovered, so none deploys over a recovery.
        let (state, stop) = (self.state.clone(), shutdown.clone());
        tokio::spawn(async move {
            crate::deploy::recover(state.clone()).await;
            crate::deploy::apply_rules(state, stop).await;
        });
        if !self.state.config.registry_notify.is_empty() {
            let endpoints = self
                .state
                .config
                .registry_notify
                .iter()
                .map(slipway_registry::NotifyEndpoint::new)
                .collect();
            let notifier = slipway_registry::Notifier::spawn(
                self.state.registry.subscribe(),
                endpoints,
                self.state.config.public_url.clone(),
            );
            // Delivery stops when the notifier is dropped: keep it until shutdown.
            tokio::spawn(async move {
                shutdown.cancelled().await;
                drop(notifier);
            });
        }
    }
}

/// Registry pushes and deletes onto the server's event bus.
async fn forward_registry_events(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut events = state.registry.subscribe();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(e) => state.events.publish(crate::events::ServerEvent::Image {
                action: match e.action {
                    slipway_registry::EventAction::Push => "push".to_owned(),
                    slipway_registry::EventAction::Delete => "delete".to_owned(),
                },
                repository: e.target.repository,
                tag: e.target.tag,
                digest: e.target.digest.to_string(),
                actor: e.actor,
            }),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("{n} registry events were not forwarded (too many at once)");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// A token this server keeps for itself, sealed in `file` of the data dir (made when
/// missing or unreadable) with `aad`.
fn stored_token(
    data: &std::path::Path,
    secrets: &SecretBox,
    file: &str,
    aad: &str,
) -> Result<String, ServerError> {
    let path = data.join(file);
    if let Ok(sealed) = std::fs::read_to_string(&path)
        && let Ok(token) = secrets.open(sealed.trim(), aad)
    {
        return Ok(token);
    }
    let token = auth::generate();
    let sealed = secrets.seal(&token, aad);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, sealed.as_bytes()));
    written.map_err(|source| ServerError::DataDir {
        path: path.clone(),
        source,
    })?;
    tighten(&path, 0o600)?;
    Ok(token)
}

/// Seals the webhook secrets an older version stored in clear (a data migration: SQL
/// alone cannot, it lacks the key). Idempotent: sealed ones are left as they are.
async fn seal_webhook_secrets(store: &Store, secrets: &SecretBox) -> Result<(), ServerError> {
    let mut sealed = 0;
    for mut repo in store.repos().await? {
        if repo
            .webhook_secret
            .starts_with(crate::secrets::WEBHOOK_SEALED)
        {
            continue;
        }
        repo.webhook_secret = secrets.seal_webhook_secret(&repo.name, &repo.webhook_secret);
        store.update_repo(&repo).await?;
        sealed += 1;
    }
    if sealed > 0 {
        // The clear values are still in free pages and the WAL until scrubbed.
        store.scrub().await?;
        tracing::info!(
            "sealed the webhook secrets of {sealed} repositories (stored in clear before)"
        );
    }
    Ok(())
}

/// The data dir holds the database (webhook secrets, sealed secrets), logs and keys: it is
/// made 0700, and one an older version made 0755 is tightened.
fn private_data_dir(data: &Path) -> Result<(), ServerError> {
    let dirs = [data.to_owned()]
        .into_iter()
        .chain(["logs", "mirrors", "registry", "service-logs"].map(|sub| data.join(sub)));
    for dir in dirs {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| ServerError::DataDir {
                path: dir.clone(),
                source,
            })?;
        tighten(&dir, 0o700)?;
    }
    Ok(())
}

/// Creates `path` empty with mode 0600 unless it exists.
fn create_private_file(path: &Path) -> Result<(), ServerError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(ServerError::DataDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Files an older version left readable by others (0644): the owner's only now.
fn tighten_data_files(data: &Path) -> Result<(), ServerError> {
    for name in [
        "slipway.db",
        "slipway.db-wal",
        "slipway.db-shm",
        "slipway.db-journal",
        // Not secret.key: one others could read is refused by `SecretBox::load_or_create`
        // (the key must be considered leaked, not quietly tightened).
        "runner.token",
        "deployer.token",
    ] {
        let path = data.join(name);
        if path.exists() {
            tighten(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Takes group and other bits away from `path` (the mode becomes `mode` if it had any).
/// A symlink is left alone: its target may not be ours to change.
fn tighten(path: &Path, mode: u32) -> Result<(), ServerError> {
    let fail = |source| ServerError::DataDir {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(fail)?;
    if meta.file_type().is_symlink() || meta.permissions().mode() & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)
}

/// `http://host:port/x` → `host:port`.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl AppState {
    /// A registered runner as this process last saw it.
    pub fn cached_runner(&self, id: i64) -> Option<crate::store::Runner> {
        self.runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }
}
