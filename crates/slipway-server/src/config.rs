//! How a server is set up: where its data lives, how it is reached, and the timings of the
//! runner protocol.

use std::path::PathBuf;
use std::time::Duration;

/// Everything [`crate::app::Server::open`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `slipway.db`, `logs/`, `mirrors/`, `registry/`, `secret.key` live here.
    pub data_dir: PathBuf,
    /// The edge proxy this process runs (`slipway up`), shown by `/api/proxy/routes` and
    /// the web UI's proxy page; `None` with `--no-proxy` and in `slipway server`.
    pub edge: Option<std::sync::Arc<slipway_proxy::Edge>>,
    /// `postgres://…` or `sqlite://…`; `None`: SQLite at `<data_dir>/slipway.db`.
    pub database_url: Option<String>,
    /// The URL people and git hosts reach the server at (links, webhook URL, statuses).
    pub public_url: String,
    /// The admin token to accept (created if new); `None`: one is generated on first start
    /// and reported once by [`crate::app::Server::first_admin_token`].
    pub admin_token: Option<String>,
    /// The token runners register with; `None`: one is generated and kept in the store.
    pub runner_token: Option<String>,
    /// The key for secrets at rest (hex or base64 of 32 bytes); `None`: `<data_dir>/secret.key`.
    pub secret_key: Option<String>,
    /// A lease lasts this long without a heartbeat.
    pub lease: Duration,
    /// How long a poll may wait for work.
    pub poll_wait: Duration,
    /// How often a stage whose runner vanished is tried again before it fails (1 = once more).
    pub max_attempts: i64,
    /// Write log batches with fdatasync before acknowledging them.
    pub durable_logs: bool,
    /// Registry repositories anyone may pull: `*`, `team/*` or a name.
    pub registry_anonymous_pull: Vec<String>,
    /// Webhooks that get the registry's push and delete events (distribution's envelope).
    pub registry_notify: Vec<String>,
    /// Run well-known plugin steps (`plugins/docker`) natively on the runners.
    pub native_plugins: bool,
    /// How long a UI session lasts after logging in.
    pub session_ttl: Duration,
    /// `Some`: `/metrics` needs `Authorization: Bearer <this>`; `None`: open (Prometheus
    /// convention).
    pub metrics_token: Option<String>,
    /// Header-read timeout, idle timeout and connection cap of the HTTP listeners.
    pub limits: ListenerLimits,
    /// API bases per notification kind (`--notify-api KIND=URL`): self-hosted Feishu/Lark,
    /// a WeChat Work proxy, or a test's stand-in.
    pub notify_api: std::collections::BTreeMap<slipway_notify::Kind, String>,
    pub service_logs: ServiceLogsConfig,
}

/// Service logs: the collector, the routes given on the command line, retention.
#[derive(Debug, Clone, Default)]
pub struct ServiceLogsConfig {
    /// Follow the containers' logs (the deployed ones and those that opt in). Off in a
    /// config made by [`ServerConfig::new`] (an embedding, a test); `slipway up` and
    /// `slipway server` turn it on unless `--no-service-logs`.
    pub collect: bool,
    /// Forward routes, logspout's `ROUTE_URIS` (`--log-route`); not stored, not removable
    /// through the API.
    pub routes: Vec<String>,
    /// `[ENV=]AGE[,SIZE]` (`--log-retention`).
    pub retention: Vec<String>,
}

/// What one client may hold of a listener (see [`crate::listen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// A request's headers must have arrived this long after its first byte (or after the
    /// connection opened), else the connection is closed.
    pub header_read_timeout: Duration,
    /// A connection with no byte read or written for this long is closed (SSE streams send
    /// a keep-alive every 15 s, long polls answer within the poll wait, so neither is idle).
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> ListenerLimits {
        ListenerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 1024,
        }
    }
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, public_url: impl Into<String>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            edge: None,
            database_url: None,
            public_url: public_url.into(),
            admin_token: None,
            runner_token: None,
            secret_key: None,
            lease: Duration::from_secs(30),
            poll_wait: Duration::from_secs(25),
            max_attempts: 2,
            durable_logs: true,
            registry_anonymous_pull: Vec::new(),
            registry_notify: Vec::new(),
            native_plugins: true,
            session_ttl: Duration::from_secs(7 * 24 * 3600),
            metrics_token: None,
            limits: ListenerLimits::default(),
            notify_api: std::collections::BTreeMap::new(),
            service_logs: ServiceLogsConfig::default(),
        }
    }

    /// The heartbeat interval runners are told: a third of the lease, so two can be missed.
    pub fn heartbeat(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(200))
    }
}
