//! How a server is set up: where its data lives, how it is reached, and the timings of the
//! runner protocol.

use std::path::PathBuf;
use std::time::Duration;

/// Everything [`crate::app::Server::open`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `slipway.db`, `logs/`, `mirrors/`, `registry/`, `secret.key` live here.
    pub data_dir: PathBuf,
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
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, public_url: impl Into<String>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
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
        }
    }

    /// The heartbeat interval runners are told: a third of the lease, so two can be missed.
    pub fn heartbeat(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(200))
    }
}
