//! Service logs wired: `slipway-logs`' store under `<data-dir>/service-logs`, its collector
//! on the local Docker engine, and its forward routes — those given on the command line
//! (`--log-route`, logspout's `ROUTE_URIS`) and those added through the API, which are kept
//! in `service-logs/routes.json`. The collecting, storing and forwarding are the crate's;
//! this starts them, keeps the route list, and answers the API's and the UI's questions.
//!
//! Invariants:
//! - A route's id names its cursor file (`service-logs/routes/<id>.json`): removing a
//!   route deletes its cursor, so adding the same URI again starts from the oldest kept
//!   record; a route that stays (across restarts) goes on from its cursor.
//! - `routes.json` is written atomically (a temporary file renamed over it) before the
//!   API answers, so an added route survives a crash the moment it is acknowledged.
//! - Routes from the command line are not stored and cannot be removed through the API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use slipway_logs::route::{RouteHandle, RouteUri, parse_route_uris};
use slipway_logs::{Positioned, ServiceKey, Store};
use tokio_util::sync::CancellationToken;

use crate::config::ServiceLogsConfig;

/// What went wrong with a route or a query, said to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ServiceLogsError {
    #[error("{0}")]
    Invalid(String),
    #[error("no log route `{0}` (`slipway logs route ls` lists them)")]
    NoRoute(String),
    #[error("route `{0}` comes from the server's --log-route (or ROUTE_URIS): change it there")]
    Configured(String),
    #[error("service logs: {0}")]
    Io(#[from] std::io::Error),
}

/// The service logs of one server.
pub struct ServiceLogs {
    pub store: Arc<Store>,
    dir: PathBuf,
    config: ServiceLogsConfig,
    collector: Mutex<Option<slipway_logs::collect::StatusHandle>>,
    routes: Mutex<BTreeMap<String, RunningRoute>>,
    /// `true` at shutdown: every route worker stops (RELP says `close`).
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for ServiceLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceLogs")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

struct RunningRoute {
    uri: RouteUri,
    configured: bool,
    /// `None` while it could not be started (the reason is in `error`).
    handle: Option<RouteHandle>,
    error: Option<String>,
}

/// The stored list of routes added through the API.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RoutesFile {
    routes: Vec<String>,
}

impl ServiceLogs {
    /// Opens (creating) the store under `dir` with the configured retention.
    pub fn open(dir: PathBuf, config: ServiceLogsConfig) -> Result<ServiceLogs, String> {
        let retention = slipway_logs::RetentionPolicy::from_args(&config.retention)
            .map_err(|e| format!("--log-retention: {e}"))?;
        for list in &config.routes {
            parse_route_uris(list).map_err(|e| format!("--log-route: {e}"))?;
        }
        let options = slipway_logs::StoreOptions {
            retention,
            ..Default::default()
        };
        let store = Store::open(&dir, options)
            .map_err(|e| format!("service logs at {}: {e}", dir.display()))?;
        Ok(ServiceLogs {
            store: Arc::new(store),
            dir,
            config,
            collector: Mutex::new(None),
            routes: Mutex::new(BTreeMap::new()),
            stop: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Starts the collector (when collecting and an engine answers) and every route; they
    /// stop when `shutdown` is cancelled.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) {
        let stop = self.stop.clone();
        let cancelled = shutdown.clone();
        tokio::spawn(async move {
            cancelled.cancelled().await;
            stop.send_replace(true);
        });
        if self.config.collect {
            match bollard::Docker::connect_with_local_defaults() {
                Ok(docker) => {
                    let collector = slipway_logs::collect::Collector::new(
                        docker,
                        self.store.clone(),
                        slipway_logs::collect::Selection::default(),
                    );
                    *lock(&self.collector) = Some(collector.status());
                    tokio::spawn(collector.run(shutdown.clone()));
                }
                Err(e) => tracing::warn!("service logs are not collected: the Docker engine: {e}"),
            }
        }
        let stored = self.stored_routes().unwrap_or_else(|e| {
            tracing::warn!(
                "{}: {e}; the routes added through the API are not started",
                self.routes_file().display()
            );
            Vec::new()
        });
        // Checked in `open`: the command line's lists parse.
        let configured = self
            .config
            .routes
            .iter()
            .filter_map(|list| parse_route_uris(list).ok())
            .flatten()
            .map(|u| (u, true));
        let kept = stored
            .iter()
            .filter_map(|u| match RouteUri::parse(u) {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::warn!("a stored log route is not started: {e}");
                    None
                }
            })
            .map(|u| (u, false));
        for (uri, configured) in configured.chain(kept).collect::<Vec<_>>() {
            // A stored route that the command line also gives is the command line's.
            if !configured && lock(&self.routes).contains_key(&uri.id()) {
                continue;
            }
            self.start_route(uri, configured);
        }
    }

    fn start_route(&self, uri: RouteUri, configured: bool) -> String {
        let id = uri.id();
        let source: Arc<dyn slipway_logs::LogSource> = self.store.clone();
        let (handle, error) = match slipway_logs::route::spawn_route(
            uri.clone(),
            source,
            self.dir.join("routes"),
            hostname(),
            self.stop.subscribe(),
        ) {
            Ok(h) => (Some(h), None),
            Err(e) => {
                tracing::warn!("log route {uri} not started: {e}");
                (None, Some(e.to_string()))
            }
        };
        let mut routes = lock(&self.routes);
        if let Some(old) = routes.insert(
            id.clone(),
            RunningRoute {
                uri,
                configured,
                handle,
                error,
            },
        ) && let Some(h) = old.handle
        {
            h.stop();
        }
        id
    }

    fn routes_file(&self) -> PathBuf {
        self.dir.join("routes.json")
    }

    fn stored_routes(&self) -> std::io::Result<Vec<String>> {
        match std::fs::read(self.routes_file()) {
            Ok(bytes) => serde_json::from_slice::<RoutesFile>(&bytes)
                .map(|f| f.routes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn save_routes(&self, routes: &BTreeMap<String, RunningRoute>) -> std::io::Result<()> {
        let file = RoutesFile {
            routes: routes
                .values()
                .filter(|r| !r.configured)
                .map(|r| r.uri.as_str().to_owned())
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        write_atomically(&self.routes_file(), &text)
    }

    /// Adds a route through the API: parsed, stored, started.
    pub fn add_route(&self, uri: &str) -> Result<Value, ServiceLogsError> {
        let parsed = RouteUri::parse(uri).map_err(|e| ServiceLogsError::Invalid(e.to_string()))?;
        let id = parsed.id();
        if lock(&self.routes).contains_key(&id) {
            return Err(ServiceLogsError::Invalid(format!(
                "route `{parsed}` is there already (id {id})"
            )));
        }
        {
            // Stored before it starts: an acknowledged route is never forgotten.
            let mut routes = lock(&self.routes);
            routes.insert(
                id.clone(),
                RunningRoute {
                    uri: parsed.clone(),
                    configured: false,
                    handle: None,
                    error: None,
                },
            );
            if let Err(e) = self.save_routes(&routes) {
                routes.remove(&id);
                return Err(e.into());
            }
        }
        self.start_route(parsed, false);
        self.route(&id).ok_or(ServiceLogsError::NoRoute(id))
    }

    /// Removes a route added through the API, with its cursor.
    pub fn remove_route(&self, id: &str) -> Result<(), ServiceLogsError> {
        let mut routes = lock(&self.routes);
        match routes.get(id) {
            None => return Err(ServiceLogsError::NoRoute(id.to_owned())),
            Some(r) if r.configured => return Err(ServiceLogsError::Configured(id.to_owned())),
            Some(_) => {}
        }
        if let Some(h) = routes.remove(id).and_then(|r| r.handle) {
            h.stop();
        }
        self.save_routes(&routes)?;
        drop(routes);
        let cursor = self.dir.join("routes").join(format!("{id}.json"));
        match std::fs::remove_file(&cursor) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn route(&self, id: &str) -> Option<Value> {
        lock(&self.routes).get(id).map(|r| route_json(id, r))
    }

    /// The services of `env`/`stack` that have records.
    pub fn services_of(&self, env: &str, stack: &str) -> Vec<String> {
        use slipway_logs::LogSource;
        self.store
            .services()
            .into_iter()
            .filter(|k| k.env == env && k.stack == stack)
            .map(|k| k.service)
            .collect()
    }

    /// Every route with what it has delivered and what it has not yet.
    pub fn routes(&self) -> Vec<Value> {
        lock(&self.routes)
            .iter()
            .map(|(id, r)| route_json(id, r))
            .collect()
    }

    /// The Prometheus lines of the collector and the routes.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        if let Some(status) = lock(&self.collector).as_ref() {
            let s = status.get();
            out.push_str(
                "# HELP slipway_service_log_records_total Log records collected from containers.\n\
                 # TYPE slipway_service_log_records_total counter\n",
            );
            for c in &s.containers {
                out.push_str(&format!(
                    "slipway_service_log_records_total{{service=\"{}\",container=\"{}\"}} {}\n",
                    label_value(&c.service.to_string()),
                    label_value(&c.name),
                    c.lines
                ));
            }
            out.push_str(
                "# HELP slipway_service_log_losses_total Containers whose remaining records could not be read.\n\
                 # TYPE slipway_service_log_losses_total counter\n",
            );
            out.push_str(&format!(
                "slipway_service_log_losses_total {}\n",
                s.losses.len()
            ));
        }
        out.push_str(
            "# HELP slipway_log_route_lag_bytes Stored service log bytes a route has not delivered yet.\n\
             # TYPE slipway_log_route_lag_bytes gauge\n\
             # HELP slipway_log_route_delivered_total Records a route delivered.\n\
             # TYPE slipway_log_route_delivered_total counter\n",
        );
        for r in self.routes() {
            let uri = label_value(r["uri"].as_str().unwrap_or(""));
            out.push_str(&format!(
                "slipway_log_route_lag_bytes{{route=\"{uri}\"}} {}\n\
                 slipway_log_route_delivered_total{{route=\"{uri}\"}} {}\n",
                r["lag_bytes"].as_u64().unwrap_or(0),
                r["delivered"].as_u64().unwrap_or(0),
            ));
        }
        out
    }
}

fn route_json(id: &str, r: &RunningRoute) -> Value {
    let status = r.handle.as_ref().map(RouteHandle::status);
    let (delivered, rejected, lag_bytes, lag_records, last_error, connected) = match &status {
        Some(s) => (
            s.delivered,
            s.rejected,
            s.lag.iter().map(|l| l.bytes).sum::<u64>(),
            // Known only when every service's backlog is counted.
            s.lag.iter().map(|l| l.records).sum::<Option<u64>>(),
            s.last_error.clone(),
            s.connected,
        ),
        None => (0, 0, 0, None, r.error.clone(), false),
    };
    json!({
        "id": id,
        "uri": r.uri.masked(),
        "configured": r.configured,
        "connected": connected,
        "delivered": delivered,
        "rejected": rejected,
        "rejections": status.as_ref().map(|s| s.rejections.clone()).unwrap_or_default(),
        "lag_bytes": lag_bytes,
        "lag_records": lag_records,
        "last_error": last_error,
    })
}

/// A record as the API gives it (NDJSON lines, SSE data).
pub fn record_json(key: &ServiceKey, p: &Positioned) -> Value {
    let r = &p.record;
    json!({
        "time": format_time(r.time_ns),
        "time_ns": r.time_ns,
        "env": key.env,
        "stack": key.stack,
        "service": key.service,
        "container": r.container,
        "replica": r.replica,
        "revision": r.revision,
        "stream": r.stream,
        "line": r.line,
        "fields": r.fields,
        "position": p.position,
    })
}

fn format_time(ns: i64) -> String {
    let t = if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs())
    } else {
        UNIX_EPOCH
    };
    humantime::format_rfc3339_nanos(t).to_string()
}

/// `since`/`until` as given to the API: a duration ago (`1h`, `90s`), an RFC 3339 time
/// (`2026-12-07T10:00:00Z`), or nanoseconds since the epoch; as nanoseconds.
pub fn parse_time_bound(what: &str, text: &str) -> Result<i64, String> {
    let now = SystemTime::now();
    if let Ok(ns) = text.parse::<i64>() {
        return Ok(ns);
    }
    let at = if let Ok(ago) = humantime::parse_duration(text) {
        now.checked_sub(ago).unwrap_or(UNIX_EPOCH)
    } else {
        humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!(
                "`{what}={text}`: give a duration ago (`1h`, `30m`) or a time (`2026-12-07T10:00:00Z`)"
            )
        })?
    };
    let ns = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    Ok(i64::try_from(ns).unwrap_or(i64::MAX))
}

fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "slipway".to_owned())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
