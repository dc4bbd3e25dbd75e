//! The Slipway server: git-host webhooks in, builds queued in the database, stages leased
//! to runners, logs and states streamed back, and the REST API and web UI over all of it.
//!
//! Modules (each owns one concern):
//! - [`webhook`]: git-host deliveries verified and parsed into a [`webhook::Hook`]. Pure.
//! - [`store`]: the database (SQLite or PostgreSQL): repositories, builds, stages, steps,
//!   secrets, runners, tokens.
//! - [`mirror`]: per-repository bare git mirrors (git CLI): fetch, read the pipeline file
//!   at a commit, changed files, branches and tags.
//! - [`secrets`]: the AEAD that encrypts secrets at rest.
//! - [`status`]: commit statuses back to GitHub, Gitea and GitLab.
//! - [`deploy`]: the deployer wired: stack files of environments planned, revisions
//!   recorded, rollouts run behind the edge proxy and recovered at start.
//! - [`notify`]: notification channels wired to the store and the event bus: the outbox of
//!   finished builds fanned out to deliveries, sent by `slipway-notify`'s workers.
//! - [`service_logs`]: `slipway-logs` wired: the service log store, the collector on the
//!   local engine, and the forward routes (command line and API).
//! - [`logstore`]: build logs (files, and short steps' whole logs in the store), each line
//!   stored exactly once, followed live.
//! - [`builds`]: builds from start to end (create, settle stages, finish, cancel, restart,
//!   promote, commit statuses); [`queue`]: stages leased to runners and what they report.
//! - [`api`]: the HTTP routes (webhooks, runner protocol, REST, SSE, UI pages); [`ui`]:
//!   templates and assets; [`events`]: the in-process event bus; [`auth`]: tokens.
//! - [`app`]: [`app::Server`], everything opened under the data dir; [`config`];
//!   [`listen`]: serving a listener with header and idle timeouts and a connection cap.
//!
//! Invariants of [`webhook`]: nothing panics on any body or header value (a property test
//! feeds it arbitrary bytes); a signature is only accepted when it matches in constant
//! time; every error maps to one HTTP status ([`webhook::WebhookError::status`]: 401 for
//! signatures, 400 for bodies) and names the header, JSON position or field at fault; a
//! deleted ref never becomes a build; and a tag is built from exactly one of the deliveries
//! a host sends for it.

pub mod api;
pub mod app;
pub mod auth;
pub mod builds;
pub mod config;
pub mod deploy;
pub mod events;
pub mod listen;
pub mod logstore;
pub mod mirror;
pub mod notify;
pub mod queue;
pub mod secrets;
pub mod service_logs;
pub mod status;
pub mod store;
pub mod ui;
pub mod webhook;

/// Now, in unix milliseconds (the store's unit of time).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
